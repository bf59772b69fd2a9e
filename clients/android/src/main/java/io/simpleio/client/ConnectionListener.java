package io.simpleio.client;

/**
 * The client's own events, on the client's executor. Every method has a default that does
 * nothing (but {@link #onListenerError}, which prints the stack trace), so implement only what
 * you need.
 */
public interface ConnectionListener {
    /** A poll was answered: at start, and after each outage. */
    default void onConnect() {}

    /** A poll failed after the client was connected; it keeps retrying by itself. */
    default void onDisconnect(SimpleIoException reason) {}

    /**
     * The server refused a request as it is (a {@code 401}/{@code 403}, an unknown namespace,
     * …; docs/spec.md §5): reported at most once per request. The client retries it at the
     * longest backoff, so it resumes by itself once the cause is gone (the user signed in again).
     */
    default void onError(SimpleIoException error) {}

    /**
     * The server's storage lost its data (its epoch changed): the messages that follow are new,
     * and messages sent before may be handled again.
     */
    default void onResync() {}

    /** A {@link Listener} or {@link Responder} threw while handling {@code message}. */
    default void onListenerError(Message message, Throwable error) {
        error.printStackTrace();
    }
}
