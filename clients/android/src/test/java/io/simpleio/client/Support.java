package io.simpleio.client;

import java.io.IOException;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * What the tests against a real server share. tests/android_client.rs starts the server and
 * sets SIMPLEIO_URL (the route) and SIMPLEIO_CONTROL (POST /stop drops every connection and
 * stops serving, POST /start serves again on the same port over the same storage). The
 * server's application: identity from the {@code x-user} header; events, in {@code /} and, with
 * the same handler, in {@code /chat}: echo, fail, count {key}, slow {ms}, send {to?, ns?, event,
 * data, volatile?}, where, bytes {name, content}, ask {event, data} (see android_client.rs);
 * {@code /news} has no handler, {@code /admin} refuses everyone.
 */
final class Support {
    private Support() {}

    /** The thread listeners run on in these tests, standing for an app's main thread. */
    static final String MAIN = "app-main";
    private static final AtomicInteger USERS = new AtomicInteger();

    static String url() {
        String url = System.getenv("SIMPLEIO_URL");
        if (url == null) throw new Check.Skip("SIMPLEIO_URL is not set (cargo test --test android_client sets it)");
        return url;
    }

    /** A user name no other test uses. */
    static String user(String name) {
        return name + "-" + USERS.incrementAndGet() + "-" + Long.toString(System.nanoTime() % 1_000_000, 36);
    }

    /** An executor of one thread named {@link #MAIN}, as Android's main thread is one thread. */
    static ExecutorService main() {
        return Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, MAIN);
            t.setDaemon(true);
            return t;
        });
    }

    /** A client of {@code user} with a short backoff, not yet connected. */
    static SimpleIo.Builder builder(String user, String url) {
        return SimpleIo.builder(url).header("x-user", user).backoff(20, 200).executor(main());
    }

    static SimpleIo connect(String user) {
        return builder(user, url()).build().connect();
    }

    /** Collects the data of every {@code event} of {@code ns}. */
    static List<Object> collect(Namespace ns, String event) {
        List<Object> got = Check.list();
        ns.on(event, m -> got.add(m.data()));
        return got;
    }

    /** Waits until the client is connected. */
    static void connected(SimpleIo io) {
        Check.until("the client to connect", io::isConnected);
    }

    /** POSTs to the control server: "stop" or "start". */
    static void control(String what) throws IOException {
        String base = System.getenv("SIMPLEIO_CONTROL");
        if (base == null) throw new Check.Skip("SIMPLEIO_CONTROL is not set");
        HttpURLConnection c = (HttpURLConnection) new URL(base + "/" + what).openConnection();
        c.setRequestMethod("POST");
        c.setDoOutput(true);
        try (OutputStream out = c.getOutputStream()) {
            out.write(new byte[0]);
        }
        Check.isTrue(c.getResponseCode() == 200, "control " + what + ": HTTP " + c.getResponseCode());
        c.getInputStream().close();
    }

    /** One raw POST of {@code body} as {@code user}; returns status and body. */
    static String[] post(String user, String body) throws IOException {
        HttpURLConnection c = (HttpURLConnection) new URL(url()).openConnection();
        c.setRequestMethod("POST");
        c.setDoOutput(true);
        c.setRequestProperty("Content-Type", "application/json");
        c.setRequestProperty("x-user", user);
        try (OutputStream out = c.getOutputStream()) {
            out.write(body.getBytes(StandardCharsets.UTF_8));
        }
        int status = c.getResponseCode();
        byte[] bytes = (status < 400 ? c.getInputStream() : c.getErrorStream()).readAllBytes();
        return new String[] {String.valueOf(status), new String(bytes, StandardCharsets.UTF_8)};
    }

    /** A proxy in front of the server of {@link #url()}. */
    static FaultyProxy proxy() throws IOException {
        URL url = new URL(url());
        return new FaultyProxy(url.getHost(), url.getPort());
    }
}
