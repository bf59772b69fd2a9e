package io.simpleio.client;

/**
 * A failure with the protocol's machine-readable {@link #code()} (docs/spec.md §5), and the HTTP
 * status and {@code Retry-After} when there were: an emit that failed for good, a refused
 * request reported to {@link ConnectionListener#onError}, or the reason of a disconnect.
 *
 * <p>Codes from the server are the spec's ({@code handler_error}, {@code unauthorized}, …) or
 * the handler's own. The client adds {@code closed} (the client was closed first),
 * {@code expired} (no answer within the dedup window), {@code network} (no HTTP answer),
 * {@code bad_response} (an answer that is not the protocol's JSON), {@code invalid_data} (data
 * the client cannot write as JSON), and fails a message over a limit of the server's at once
 * with the server's code for it ({@code invalid_field}, {@code message_too_large},
 * {@code data_too_deep}).
 */
public final class SimpleIoException extends Exception {
    private static final long serialVersionUID = 1L;

    private final String code;
    private final int status;
    private final long retryAfterSeconds;

    SimpleIoException(String code, String message, int status, long retryAfterSeconds, Throwable cause) {
        super(message, cause);
        this.code = code;
        this.status = status;
        this.retryAfterSeconds = retryAfterSeconds;
    }

    SimpleIoException(String code, String message) {
        this(code, message, 0, -1, null);
    }

    /** The error's code, for programs; {@code null} for an HTTP error without the spec's body. */
    public String code() {
        return code;
    }

    /** The HTTP status of the answer, or 0 if there was none (a network error, a local check). */
    public int status() {
        return status;
    }

    /** The answer's {@code Retry-After} in seconds, or -1 if it had none. */
    public long retryAfterSeconds() {
        return retryAfterSeconds;
    }

    @Override
    public String toString() {
        return "SimpleIoException(" + (status > 0 ? status + " " : "") + code + ": " + getMessage() + ")";
    }
}
