package io.simpleio.client;

import org.json.JSONObject;

/**
 * The server's limits the client sizes its requests by (docs/spec.md §6): the defaults, then
 * what a handshake's {@code limits} gives. A key the server does not give keeps its default.
 */
final class Limits {
    volatile long holdMs = 25_000;
    volatile long maxBody = 1 << 20;
    volatile int maxMessages = 100;
    volatile int maxEventLen = 128;
    volatile long maxMessageBytes = 1 << 20;
    volatile int maxDataDepth = 64;

    void update(JSONObject limits) {
        holdMs = limits.optLong("hold_ms", holdMs);
        maxBody = limits.optLong("max_body", maxBody);
        maxMessages = Math.max(1, limits.optInt("max_messages", maxMessages));
        maxEventLen = limits.optInt("max_event_len", maxEventLen);
        maxMessageBytes = limits.optLong("max_message_bytes", maxMessageBytes);
        maxDataDepth = limits.optInt("max_data_depth", maxDataDepth);
    }
}
