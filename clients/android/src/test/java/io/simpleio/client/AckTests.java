package io.simpleio.client;

import static io.simpleio.client.Check.same;
import static io.simpleio.client.Check.value;

import java.util.Map;
import java.util.concurrent.CompletableFuture;
import org.json.JSONArray;
import org.json.JSONObject;

/**
 * Server to client acks with data (protocol v1.2) against the real server: the client's
 * listener replies, and the server's emit that asked resolves with it.
 */
final class AckTests {
    private AckTests() {}

    /**
     * Whether the server knows reply messages: a reply to a position that asked nothing of
     * this client is acked {@code unknown_message} by a v1.2 server; an older one refuses the
     * message as it has no event.
     */
    static boolean serverSupportsAcks() throws Exception {
        String[] answer = Support.post(Support.user("probe"),
                "{\"client\":\"probe\",\"messages\":[{\"id\":\"probe-1\",\"reply_to\":1,\"data\":null}]}");
        if (!"200".equals(answer[0])) return false;
        JSONArray acks = new JSONObject(answer[1]).optJSONArray("acks");
        JSONObject error = acks == null ? null : acks.optJSONObject(0).optJSONObject("error");
        return error != null && "unknown_message".equals(error.optString("code"));
    }

    @Test
    static void theServersEmitResolvesWithTheListenersReply() throws Exception {
        if (!serverSupportsAcks()) {
            throw new AssertionError("the server does not ack a reply to a position that asked nothing with unknown_message");
        }
        SimpleIo io = Support.builder(Support.user("asked"), Support.url()).build();
        CompletableFuture<Object> answers = new CompletableFuture<>();
        io.respond("question", m -> Map.of("answer", m.data(), "bytes", new byte[] {7}));
        // The server's handler asks in the background and sends what its emit resolved with.
        io.on("answers", m -> answers.complete(m.data()));
        io.connect();
        try {
            Support.connected(io);
            value(io.emit("ask", Map.of("event", "question", "data", 42)), "ask");
            Object replies = value(answers, "the answers");
            same(new JSONArray("[{\"answer\":42,\"bytes\":{\"$bytes\":\"Bw==\"}}]"), replies, "the replies of the user's clients");
        } finally {
            io.close();
        }
    }
}
