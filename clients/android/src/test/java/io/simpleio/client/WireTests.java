package io.simpleio.client;

import static io.simpleio.client.Check.same;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.json.JSONArray;
import org.json.JSONObject;

/**
 * The client against a scripted server (the JDK's own HTTP server), for what the real one cannot
 * show yet or cannot be made to do: the reply messages of protocol v1.2 exactly as
 * /docs/spec.md's wire format says, and JSON with bytes both ways.
 */
final class WireTests {
    private WireTests() {}

    private static void answer(HttpExchange exchange, int status, String body) throws IOException {
        byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
        exchange.getResponseHeaders().set("Content-Type", "application/json");
        exchange.sendResponseHeaders(status, bytes.length);
        try (OutputStream out = exchange.getResponseBody()) {
            out.write(bytes);
        }
    }

    private static final String FIRST_ANSWER = "{\"epoch\":\"e1\",\"cursor\":6,\"messages\":["
            + "{\"pos\":1,\"event\":\"q\",\"data\":{\"n\":1},\"ack\":true},"
            + "{\"pos\":2,\"event\":\"none\",\"data\":2,\"ack\":true},"
            + "{\"pos\":3,\"event\":\"plain\",\"data\":3,\"ack\":true},"
            + "{\"pos\":4,\"event\":\"gone\",\"data\":4,\"ack\":true},"
            + "{\"pos\":5,\"event\":\"q\",\"data\":5},"
            + "{\"pos\":6,\"ns\":\"/chat\",\"event\":\"later\",\"data\":6,\"ack\":true}],"
            + "\"volatile\":[{\"event\":\"q\",\"data\":7,\"ack\":true}],"
            + "\"limits\":{\"hold_ms\":1000}}";

    @Test
    static void repliesGoOutAsReplyMessagesOncePerAskingMessageWithAListener() throws Exception {
        HttpServer server = HttpServer.create(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 0);
        List<JSONObject> sent = Check.list();
        AtomicInteger polls = new AtomicInteger();
        server.createContext("/simpleio", exchange -> {
            if ("GET".equals(exchange.getRequestMethod())) {
                if (polls.getAndIncrement() == 0) {
                    answer(exchange, 200, FIRST_ANSWER);
                } else {
                    Check.sleep(200);
                    answer(exchange, 200, "{\"epoch\":\"e1\",\"cursor\":6,\"messages\":[],\"volatile\":[]}");
                }
                return;
            }
            try {
                JSONObject body = new JSONObject(new String(exchange.getRequestBody().readAllBytes(), StandardCharsets.UTF_8));
                JSONArray messages = body.getJSONArray("messages");
                StringBuilder acks = new StringBuilder();
                for (int i = 0; i < messages.length(); i++) {
                    JSONObject m = messages.getJSONObject(i);
                    sent.add(m);
                    if (acks.length() > 0) acks.append(',');
                    String id = JSONObject.quote(m.getString("id"));
                    acks.append(m.optLong("reply_to") == 4
                            ? "{\"id\":" + id + ",\"error\":{\"code\":\"unknown_message\",\"message\":\"expired\"}}"
                            : "{\"id\":" + id + ",\"reply\":null}");
                }
                answer(exchange, 200, "{\"epoch\":\"e1\",\"acks\":[" + acks + "]}");
            } catch (Exception e) {
                answer(exchange, 500, "{}");
            }
        });
        server.start();
        SimpleIo io = SimpleIo.builder("http://127.0.0.1:" + server.getAddress().getPort() + "/simpleio")
                .executor(Support.main())
                .namespaces("/chat")
                .build();
        List<Message> got = Check.list();
        io.respond("q", m -> {
            got.add(m);
            return new byte[] {1, 2, 3};
        });
        io.on("plain", got::add);
        io.respond("gone", m -> "x");
        io.of("/chat").respond("later", m -> {
            CompletableFuture<Object> later = new CompletableFuture<>();
            later.completeOnTimeout("done", 100, TimeUnit.MILLISECONDS);
            return later;
        });
        io.connect();
        try {
            Check.until("replies to 1, 3, 4 and 6", () -> replyTo(sent).keySet().containsAll(Arrays.asList(1L, 3L, 4L, 6L)));
            Check.sleep(500);
            Map<Long, Integer> count = new HashMap<>();
            Set<String> ids = new HashSet<>();
            for (JSONObject m : Check.copy(sent)) {
                Check.isTrue(m.has("reply_to"), "only replies are sent: " + m);
                Check.isTrue(!m.has("event") && !m.has("ns"), "a reply has no event and no ns: " + m);
                Check.isTrue(ids.add(m.getString("id")), "each reply has its own id: " + m);
                count.merge(m.getLong("reply_to"), 1, Integer::sum);
            }
            // 2: no listener; 5: no ack asked; the volatile one never asks. 4's unknown_message
            // is final: not resent.
            same(Map.of(1L, 1, 3L, 1, 4L, 1, 6L, 1), count, "one reply per asking message with a listener");
            Map<Long, Object> data = replyTo(sent);
            same(new JSONObject("{\"$bytes\":\"AQID\"}"), data.get(1L), "bytes in a reply");
            same(null, data.get(3L), "a plain listener replies null");
            same("x", data.get(4L), "the reply to 4");
            same("done", data.get(6L), "a reply completed later");
            Check.isTrue(got.size() == 4, "q (twice, 1 and 5), the volatile q and plain were delivered: " + got);
            Check.isTrue(got.get(0).wantsReply() && !got.get(2).wantsReply(), "wantsReply says which asked");
        } finally {
            io.close();
            server.stop(0);
        }
    }

    /** The replies sent so far: {@code reply_to} to data as written (bytes as their JSON). */
    private static Map<Long, Object> replyTo(List<JSONObject> sent) {
        Map<Long, Object> replies = new HashMap<>();
        for (JSONObject m : Check.copy(sent)) {
            if (m.has("reply_to")) replies.put(m.optLong("reply_to"), Json.unwrapNull(m.opt("data")));
        }
        return replies;
    }

    @Test
    static void bytesObjectsBecomeByteArraysAndOnlyThose() throws Exception {
        Object parsed = Json.parse("{\"a\":{\"$bytes\":\"AJ+Slg==\"},\"b\":[{\"$bytes\":\"\"}],"
                + "\"bad\":{\"$bytes\":\"not base64!\"},\"two\":{\"$bytes\":\"AA==\",\"x\":1},\"num\":{\"$bytes\":1}}");
        JSONObject o = (JSONObject) parsed;
        Check.isTrue(Arrays.equals(new byte[] {0, (byte) 0x9f, (byte) 0x92, (byte) 0x96}, (byte[]) o.get("a")), "a bytes object");
        Check.isTrue(((byte[]) o.getJSONArray("b").get(0)).length == 0, "empty bytes, inside an array");
        Check.isTrue(o.get("bad") instanceof JSONObject, "invalid base64 stays an object");
        Check.isTrue(o.get("two") instanceof JSONObject, "another key besides $bytes: ordinary JSON");
        Check.isTrue(o.get("num") instanceof JSONObject, "$bytes not a string: ordinary JSON");
        same("{\"$bytes\":\"AJ+Slg==\"}", Json.write(o.get("a")), "bytes written back");
        List<Object> nested = new ArrayList<>();
        nested.add(Map.of("png", new byte[] {(byte) 0x89, 0x50}));
        same("[{\"png\":{\"$bytes\":\"iVA=\"}}]", Json.write(nested), "bytes anywhere in the data");
    }

    @Test
    static void nestingIsCountedAsTheSpecCountsIt() {
        same("[[1]]", Json.write(List.of(List.of(1)), 2), "[[1]] is 2 levels");
        try {
            Json.write(List.of(List.of(1)), 1);
            throw new AssertionError("[[1]] passed a limit of 1");
        } catch (Json.Unwritable e) {
            same("data_too_deep", e.code, "the code");
        }
    }
}
