package io.simpleio.client;

/**
 * Called for each message of one event, on the client's executor ({@link
 * SimpleIo.Builder#executor}). Registered with {@link Namespace#on}.
 *
 * <p>A message that asks for a reply ({@link Message#wantsReply()}) and reaches only listeners
 * of this kind is answered with {@code null}; use a {@link Responder} to reply with data.
 */
@FunctionalInterface
public interface Listener {
    /**
     * Handles one message. An exception goes to {@link ConnectionListener#onListenerError}; it
     * does not stop the client, and the message is not delivered again.
     */
    void onMessage(Message message) throws Exception;
}
