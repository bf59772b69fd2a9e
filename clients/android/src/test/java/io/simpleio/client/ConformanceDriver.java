package io.simpleio.client;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * The Java client as a client conformance adapter (docs/client-conformance.md): commands as
 * JSON lines on stdin, the client's events as JSON lines on stdout. tests/client_conformance.rs
 * starts it with SIMPLEIO_URL, SIMPLEIO_USER, SIMPLEIO_EVENTS and the backoff variables.
 *
 * <p>By hand: {@code SIMPLEIO_URL=http://127.0.0.1:3000/simpleio SIMPLEIO_USER=ann java -cp
 * CLASSES:/usr/share/java/com.android.json.jar io.simpleio.client.ConformanceDriver}, then type
 * {@code {"cmd":"emit","tag":"1","event":"chat","data":1}}.
 */
public final class ConformanceDriver {
    private ConformanceDriver() {}

    private static synchronized void write(Map<String, Object> event) {
        System.out.println(Json.write(event));
        System.out.flush();
    }

    private static Map<String, Object> event(String type, Object... fields) {
        Map<String, Object> event = new LinkedHashMap<>();
        event.put("type", type);
        for (int i = 0; i < fields.length; i += 2) event.put((String) fields[i], fields[i + 1]);
        return event;
    }

    public static void main(String[] args) throws IOException, InterruptedException {
        Map<String, String> env = System.getenv();
        String url = env.get("SIMPLEIO_URL");
        String user = env.get("SIMPLEIO_USER");
        if (url == null || user == null) {
            System.err.println("ConformanceDriver: SIMPLEIO_URL and SIMPLEIO_USER must be set");
            System.exit(2);
        }
        // One thread for every callback, as an app's main thread would be.
        ExecutorService main = Executors.newSingleThreadExecutor();
        SimpleIo.Builder builder = SimpleIo.builder(url).header("x-user", user).executor(main);
        if (env.containsKey("SIMPLEIO_BACKOFF_BASE_MS") && env.containsKey("SIMPLEIO_BACKOFF_MAX_MS")) {
            builder.backoff(
                    Long.parseLong(env.get("SIMPLEIO_BACKOFF_BASE_MS")),
                    Long.parseLong(env.get("SIMPLEIO_BACKOFF_MAX_MS")));
        }
        builder.connectionListener(new ConnectionListener() {
            @Override
            public void onConnect() {
                write(event("connected"));
            }

            @Override
            public void onDisconnect(SimpleIoException reason) {
                write(event("disconnected", "reason", String.valueOf(reason)));
            }

            @Override
            public void onError(SimpleIoException error) {
                write(event("error", "status", error.status(), "code", error.code()));
            }

            @Override
            public void onResync() {
                write(event("resynced"));
            }
        });
        SimpleIo io = builder.build();
        String events = env.getOrDefault("SIMPLEIO_EVENTS", "msg");
        for (String name : events.split(",")) {
            io.on(name, m -> write(event("message", "ns", m.namespace(), "event", m.event(),
                    "data", m.data(), "pos", m.isVolatile() ? null : m.position())));
        }
        write(event("client_id", "id", io.id()));
        io.connect();

        BufferedReader input = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = input.readLine()) != null) {
            // Lines that arrived together are emitted together, so they can share one POST.
            List<String> lines = new ArrayList<>();
            lines.add(line);
            while (input.ready() && (line = input.readLine()) != null) lines.add(line);
            boolean[] close = {false};
            io.batch(() -> {
                for (String text : lines) {
                    if (text.trim().isEmpty()) continue;
                    close[0] |= command(io, text);
                }
            });
            if (close[0]) break;
        }
        io.close();
        // After the `closed` failures of the emits still waiting, which run on `main` first.
        main.execute(() -> write(event("closed")));
        main.shutdown();
        main.awaitTermination(5, TimeUnit.SECONDS);
        System.exit(0);
    }

    /** Runs one command; true for {@code close}. */
    private static boolean command(SimpleIo io, String text) {
        JSONObject cmd;
        try {
            cmd = new JSONObject(text);
        } catch (JSONException e) {
            write(event("bad_command", "line", text, "reason", e.getMessage()));
            return false;
        }
        String name = cmd.optString("cmd");
        if ("close".equals(name)) return true;
        if (!"emit".equals(name)) {
            write(event("bad_command", "line", text, "reason", "unknown cmd"));
            return false;
        }
        String tag = cmd.optString("tag");
        String ns = cmd.isNull("ns") ? "/" : cmd.optString("ns", "/");
        Namespace handle = "/".equals(ns) ? io : io.of(ns);
        Object data = Json.unwrapNull(Json.decode(cmd.opt("data")));
        handle.emit(cmd.optString("event"), data).whenComplete((reply, error) -> {
            if (error == null) {
                write(event("ack", "tag", tag, "reply", reply));
            } else {
                Throwable cause = error.getCause() != null && !(error instanceof SimpleIoException) ? error.getCause() : error;
                String code = cause instanceof SimpleIoException ? ((SimpleIoException) cause).code() : null;
                write(event("ack_error", "tag", tag, "code", code, "message", String.valueOf(cause.getMessage())));
            }
        });
        return false;
    }
}
