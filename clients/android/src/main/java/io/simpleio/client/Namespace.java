package io.simpleio.client;

import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;

/**
 * One namespace of a client (docs/spec.md §4a): its listeners and its emits. The client itself
 * is the handle of {@code "/"}; {@link SimpleIo#of} gives the others. All of them share the
 * client's one polling connection.
 */
public class Namespace {
    final SimpleIo client;
    final String name;
    /** Listeners by event, in the order they were added; each a {@link Responder}. */
    final Map<String, List<Responder>> listeners = new ConcurrentHashMap<>();
    /** The responders wrapping {@link Listener}s, by (event, listener), so {@link #off} finds them. */
    private final Map<List<Object>, Responder> wrapped = new ConcurrentHashMap<>();

    Namespace(SimpleIo client, String name) {
        this.client = client;
        this.name = name;
    }

    /** The namespace's name: {@code "/"}, {@code "/chat"}, … */
    public String name() {
        return name;
    }

    /**
     * Calls {@code listener} for each message {@code event} of this namespace, on the client's
     * executor. Returns this handle, for chaining.
     */
    public Namespace on(String event, Listener listener) {
        Responder responder =
                message -> {
                    listener.onMessage(message);
                    return null;
                };
        wrapped.put(List.of(event, listener), responder);
        return respond(event, responder);
    }

    /**
     * Calls {@code responder} for each message {@code event} of this namespace, on the client's
     * executor; when the message asks for a reply, its return value is the reply (the first
     * non-null one among the event's listeners, in the order they were added).
     */
    public Namespace respond(String event, Responder responder) {
        listeners.computeIfAbsent(event, e -> new CopyOnWriteArrayList<>()).add(responder);
        return this;
    }

    /** Removes {@code listener} (a {@link Listener} or a {@link Responder}) from {@code event}. */
    public Namespace off(String event, Object listener) {
        List<Responder> list = listeners.get(event);
        if (list != null) {
            Responder responder = listener instanceof Listener ? wrapped.remove(List.of(event, listener)) : null;
            list.remove(responder != null ? responder : listener);
        }
        return this;
    }

    /** Removes every listener of {@code event}. */
    public Namespace off(String event) {
        listeners.remove(event);
        return this;
    }

    /**
     * Sends {@code event} with {@code data} to this namespace's handler on the server.
     *
     * <p>{@code data} may be {@code null}, a {@code String}, {@code Number}, {@code Boolean},
     * {@code byte[]} (sent as bytes, §4b), {@code JSONObject}, {@code JSONArray}, {@code Map},
     * {@code Collection} or array of these. It is written as JSON now, so changing it later
     * does not change what a retry sends.
     *
     * <p>The future completes, on the client's executor, with the handler's reply (typed as
     * {@link Message#data()} is), or fails with a {@link SimpleIoException}: the handler's error
     * and its code, a refusal of this very message, {@code expired}, {@code closed}. It never
     * fails on a transient failure: the message waits in the outbox and is resent with the same
     * id until it gets an answer.
     */
    public CompletableFuture<Object> emit(String event, Object data) {
        // The client is its own "/" handle, and cannot pass itself to its super constructor.
        SimpleIo owner = client != null ? client : (SimpleIo) this;
        return owner.emit(this, event, data);
    }

    /** {@link #emit(String, Object)} with no data ({@code null}). */
    public CompletableFuture<Object> emit(String event) {
        return emit(event, null);
    }
}
