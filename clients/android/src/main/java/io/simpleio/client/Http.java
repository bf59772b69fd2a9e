package io.simpleio.client;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.BooleanSupplier;
import org.json.JSONObject;

/** One HTTP exchange with the route over {@link HttpURLConnection}, abortable from elsewhere. */
final class Http {
    private Http() {}

    /** What came back: the status, the body as text, and {@code Retry-After} (-1 if none). */
    static final class Answer {
        final int status;
        final String body;
        final long retryAfter;

        Answer(int status, String body, long retryAfter) {
            this.status = status;
            this.body = body;
            this.retryAfter = retryAfter;
        }

        /** A non-2xx answer as the failure it is, with the spec's code when the body has one. */
        SimpleIoException failure() {
            String code = null;
            String message = "HTTP " + status;
            try {
                Object parsed = Json.parse(body);
                if (parsed instanceof JSONObject) {
                    JSONObject error = ((JSONObject) parsed).optJSONObject("error");
                    if (error != null) {
                        code = error.optString("code", null);
                        message = error.optString("message", message);
                    }
                }
            } catch (Exception e) {
                // A proxy's page or no body: go by the status (spec §5).
            }
            return new SimpleIoException(code, message, status, retryAfter, null);
        }
    }

    /**
     * Sends one request. {@code inFlight} holds the connection while it runs, so that {@code
     * abort} can end it from another thread (the receive loop's waiting poll, on close or on a
     * wake-up). A network failure or timeout is an {@link IOException}.
     */
    static Answer exchange(
            URL url,
            String method,
            String body,
            Map<String, String> headers,
            int timeoutMs,
            AtomicReference<HttpURLConnection> inFlight,
            BooleanSupplier cancelled)
            throws IOException {
        HttpURLConnection connection = (HttpURLConnection) url.openConnection();
        inFlight.set(connection);
        try {
            connection.setRequestMethod(method);
            // The whole wait of a held poll is one read: the server sends nothing until it answers.
            connection.setReadTimeout(timeoutMs);
            connection.setConnectTimeout(Math.min(timeoutMs, 10_000));
            connection.setUseCaches(false);
            connection.setInstanceFollowRedirects(false);
            connection.setRequestProperty("Accept", "application/json");
            for (Map.Entry<String, String> header : headers.entrySet()) {
                connection.setRequestProperty(header.getKey(), header.getValue());
            }
            byte[] bytes = body == null ? null : body.getBytes(StandardCharsets.UTF_8);
            if (bytes != null) {
                connection.setDoOutput(true);
                connection.setRequestProperty("Content-Type", "application/json");
                // No fixed-length streaming mode: in it, HttpURLConnection drops the body of a
                // 401/403 answer (it cannot retry the request for authentication), and with it
                // the spec's error code. Bodies are bounded by max_body, so buffering is cheap.
            }
            connection.connect();
            // disconnect() before connect() does nothing, so an abort that came before this
            // point would be missed: its caller marks the request cancelled first, checked here.
            // One after this point closes the socket, and the read below fails.
            if (cancelled.getAsBoolean()) throw new IOException("cancelled");
            if (bytes != null) {
                try (OutputStream out = connection.getOutputStream()) {
                    out.write(bytes);
                }
            }
            int status = connection.getResponseCode();
            InputStream in = status < 400 ? connection.getInputStream() : connection.getErrorStream();
            String text = in == null ? "" : readAll(in);
            return new Answer(status, text, retryAfter(connection.getHeaderField("Retry-After")));
        } catch (RuntimeException e) {
            // HttpURLConnection throws some failures unchecked (a connection closed under it):
            // to the loops they are network failures like any other, to be retried.
            throw new IOException(e);
        } finally {
            inFlight.compareAndSet(connection, null);
        }
    }

    /** Ends the request in flight, if any: its thread gets an {@link IOException}. */
    static void abort(AtomicReference<HttpURLConnection> inFlight) {
        HttpURLConnection connection = inFlight.getAndSet(null);
        if (connection != null) {
            connection.disconnect();
        }
    }

    private static String readAll(InputStream in) throws IOException {
        // Read to the end, so the connection can be kept alive for the next request.
        try (InputStream stream = in) {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buffer = new byte[8192];
            int n;
            while ((n = stream.read(buffer)) != -1) {
                out.write(buffer, 0, n);
            }
            return new String(out.toByteArray(), StandardCharsets.UTF_8);
        }
    }

    /** Whole seconds; a date (as a proxy may send) counts as absent (spec §5). */
    private static long retryAfter(String header) {
        if (header == null) return -1;
        try {
            return Math.max(0, Long.parseLong(header.trim()));
        } catch (NumberFormatException e) {
            return -1;
        }
    }
}
