package io.simpleio.client;

/**
 * A listener whose return value is the reply to a message that asks for one ({@link
 * Message#wantsReply()}): the server's {@code emit} that asked resolves with it. Registered with
 * {@link Namespace#respond}; runs on the client's executor, like a {@link Listener}.
 *
 * <p>The reply may be anything {@link Namespace#emit} takes as data ({@code byte[]} travels as
 * bytes), or a {@link java.util.concurrent.CompletionStage} of it, to reply once work done
 * elsewhere is finished. A responder that throws, or whose stage fails, sends no reply: the
 * sender's wait times out, as it does for a client with no listener for the event.
 */
@FunctionalInterface
public interface Responder {
    /** Handles one message and returns its reply (or {@code null}). */
    Object respond(Message message) throws Exception;
}
