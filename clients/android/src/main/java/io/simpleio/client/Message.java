package io.simpleio.client;

/**
 * A message from the server, handed to the listeners of its namespace and event once, in order
 * (docs/spec.md §3).
 *
 * <p>{@link #data()} is what the server sent, as org.json gives it ({@code JSONObject}, {@code
 * JSONArray}, {@code String}, {@code Integer}/{@code Long}/{@code Double}, {@code Boolean}, or
 * {@code null}; {@code JSONObject.NULL} inside objects and arrays), with every {@code {"$bytes":
 * base64}} object, anywhere in it, turned into a {@code byte[]} (§4b).
 */
public final class Message {
    private final String namespace;
    private final String event;
    private final Object data;
    private final long position;
    private final boolean wantsReply;

    Message(String namespace, String event, Object data, long position, boolean wantsReply) {
        this.namespace = namespace;
        this.event = event;
        this.data = data;
        this.position = position;
        this.wantsReply = wantsReply;
    }

    /** The message's namespace: {@code "/"} for the default one. */
    public String namespace() {
        return namespace;
    }

    /** The event name. */
    public String event() {
        return event;
    }

    /** The data; see the class's docs for its types. */
    public Object data() {
        return data;
    }

    /** The message's position in the user's log (§3a), or -1 for a volatile message. */
    public long position() {
        return position;
    }

    /** Whether it is volatile: sent only to clients waiting at that moment, never repeated. */
    public boolean isVolatile() {
        return position < 0;
    }

    /**
     * Whether its sender waits for this client's reply (the message carried {@code "ack":
     * true}): the client sends one when the event has a listener, the value of its {@link
     * Responder} ({@code null} from plain {@link Listener}s).
     */
    public boolean wantsReply() {
        return wantsReply;
    }

    @Override
    public String toString() {
        return "Message(" + namespace + " " + event + " @" + position + ": " + Json.write(data) + ")";
    }
}
