package io.simpleio.client;

import java.nio.charset.StandardCharsets;
import java.util.concurrent.CompletableFuture;

/** A message in the outbox: an emit, or the reply to a message of the server. */
final class Outgoing {
    /** {@code <instance>-<counter>}: the same on every resend, so the server handles it once. */
    final String id;
    /** The message as it goes on the wire, written once, so retries send the same content. */
    final String json;
    /** Its length in UTF-8, for sizing a POST by {@code max_body}. */
    final int bytes;
    /** The emit's future; {@code null} for a reply, whose outcome the application never sees. */
    final CompletableFuture<Object> future;
    /** The client id it was first sent with (spec §4: resent under it); null until then. */
    String clientId;
    /** When it was first sent (ms, monotonic); the dedup window counts from there. */
    long firstSent = -1;

    Outgoing(String id, String json, CompletableFuture<Object> future) {
        this.id = id;
        this.json = json;
        this.bytes = json.getBytes(StandardCharsets.UTF_8).length;
        this.future = future;
    }
}
