package io.simpleio.client;

import java.io.IOException;
import java.io.UnsupportedEncodingException;
import java.net.HttpURLConnection;
import java.net.MalformedURLException;
import java.net.URL;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Executor;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.BooleanSupplier;
import java.util.function.Supplier;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * A simpleio client: receives the user's messages and sends the application's, over the
 * protocol of docs/spec.md (v1.1, and v1.2's replies to the server), with reconnection,
 * deduplication and retries done for it.
 *
 * <pre>{@code
 * SimpleIo io = SimpleIo.builder("https://example.com/simpleio")
 *         .header("Authorization", "Bearer " + token)
 *         .executor(context.getMainExecutor())        // listeners run on the main thread
 *         .build();
 * io.on("chat", m -> show(m.data()));
 * io.connect();
 * io.emit("chat", new JSONObject().put("text", "hi")).thenAccept(reply -> ...);
 * }</pre>
 *
 * <p>Two threads of its own do the work: one long poll after another (spec §3) and one {@code
 * POST} at a time (§4). The object is the handle of the default namespace {@code "/"}; {@link
 * #of} gives the others. Everything here is safe to call from any thread.
 */
public final class SimpleIo extends Namespace {
    private static final SecureRandom RANDOM = new SecureRandom();
    private static final char[] ID_ALPHABET =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-".toCharArray();
    /** Spec §4: a pending ack without {@code retry_after_ms} is asked for again after 250 ms. */
    private static final long PENDING_DEFAULT_MS = 250;

    private final URL route;
    private final Map<String, String> headers;
    private final Supplier<Map<String, String>> headerSupplier;
    private final Executor executor;
    private final ConnectionListener connection;
    private final long backoffBase;
    private final long backoffMax;
    private final int postTimeoutMs;
    private final long dedupWindowMs;
    /** A random string of this instance's own: message ids are {@code instance-counter} (§4). */
    private final String instance = randomId();

    final Limits limits = new Limits();
    /** Guards the outbox, the namespaces, and the loops' sleeps and wake-ups. */
    private final Object lock = new Object();
    /** Handles by namespace name, this object as {@code "/"}: their names are the GET's ns. */
    private final Map<String, Namespace> spaces = new LinkedHashMap<>();
    /** Unacknowledged messages in emit order; their ids stay fixed across retries. */
    private final ArrayDeque<Outgoing> outbox = new ArrayDeque<>();
    private long counter;
    /** While positive, the send loop waits, so emits made in {@link #batch} share one POST. */
    private int holding;
    /** Bumped by {@link #wake()}: ends backoff sleeps and the waiting poll. */
    private volatile long wakeups;
    private boolean started;
    private volatile boolean closed;
    private volatile boolean connected;
    /** The client id (§2); a new one after {@code taken_over} (§3 step 6). */
    private volatile String clientId = randomId();
    /** The latest epoch and cursor the server gave (§3); receive loop only. */
    private String epoch;
    private Long cursor;
    private final AtomicReference<HttpURLConnection> getting = new AtomicReference<>();
    private final AtomicReference<HttpURLConnection> posting = new AtomicReference<>();

    private SimpleIo(Builder builder) {
        super(null, "/");
        this.route = builder.route;
        this.headers = Collections.unmodifiableMap(new LinkedHashMap<>(builder.headers));
        this.headerSupplier = builder.headerSupplier;
        this.executor = builder.executor;
        this.connection = builder.connection;
        this.backoffBase = builder.backoffBaseMs;
        this.backoffMax = builder.backoffMaxMs;
        this.postTimeoutMs = builder.postTimeoutMs;
        this.dedupWindowMs = builder.dedupWindowMs;
        spaces.put("/", this);
        for (String ns : builder.namespaces) {
            spaces.computeIfAbsent(ns, n -> new Namespace(this, n));
        }
    }

    /** A builder for a client of the route at {@code url} (e.g. {@code https://host/simpleio}). */
    public static Builder builder(String url) {
        return new Builder(url);
    }

    /** The client id the client polls with now (it changes after a take-over, spec §3). */
    public String id() {
        return clientId;
    }

    /** Whether the last poll was answered: between an {@code onConnect} and the next disconnect. */
    public boolean isConnected() {
        return connected;
    }

    /**
     * The handle of namespace {@code ns} (e.g. {@code "/chat"}), the same one each time. It is
     * listed in every poll from the next one on: made before {@link #connect()}, in the first;
     * made later, the waiting poll is ended so the next one, sent at once, lists it.
     */
    public Namespace of(String ns) {
        boolean added;
        Namespace space;
        synchronized (lock) {
            space = spaces.get(ns);
            added = space == null;
            if (added) {
                space = new Namespace(this, ns);
                spaces.put(ns, space);
            }
        }
        if (added && started) {
            wake();
        }
        return space;
    }

    /** Starts receiving and sending (once; later calls do nothing). Add listeners before it. */
    public SimpleIo connect() {
        synchronized (lock) {
            if (started || closed) return this;
            started = true;
        }
        Thread receiver = new Thread(this::receiveLoop, "simpleio-receive");
        Thread sender = new Thread(this::sendLoop, "simpleio-send");
        receiver.setDaemon(true);
        sender.setDaemon(true);
        receiver.start();
        sender.start();
        return this;
    }

    /**
     * Runs {@code emits} with the send loop held, so every message it emits goes out together
     * (in as few POSTs as the limits allow) rather than the first alone.
     */
    public void batch(Runnable emits) {
        synchronized (lock) {
            holding++;
        }
        try {
            emits.run();
        } finally {
            synchronized (lock) {
                holding--;
                lock.notifyAll();
            }
        }
    }

    /**
     * Retries now: ends the waiting poll and any backoff, so the client reconnects at once.
     * Call it when the network comes back or the app returns to the foreground (a poll may
     * hang on a dead connection until its timeout). Cheap and safe: nothing is confirmed or
     * lost by it.
     */
    public void wake() {
        synchronized (lock) {
            wakeups++;
            lock.notifyAll();
        }
        Http.abort(getting);
    }

    /**
     * Stops the client: ends the requests in flight, sends nothing more, and fails the emits
     * still waiting with {@code closed}. Messages already delivered stay confirmed only as far
     * as the last poll said.
     */
    public void close() {
        List<Outgoing> dropped;
        synchronized (lock) {
            if (closed) return;
            closed = true;
            dropped = new ArrayList<>(outbox);
            outbox.clear();
            lock.notifyAll();
        }
        Http.abort(getting);
        Http.abort(posting);
        SimpleIoException err = new SimpleIoException("closed", "the client is closed");
        for (Outgoing m : dropped) {
            fail(m, err);
        }
        setConnected(false, err);
    }

    // --- sending ----------------------------------------------------------------------------

    CompletableFuture<Object> emit(Namespace ns, String event, Object data) {
        CompletableFuture<Object> future = new CompletableFuture<>();
        try {
            if (event == null) throw new SimpleIoException("invalid_field", "an event is required");
            // Spec §6: fail at once, without sending, a message over the server's limits.
            int eventBytes = event.getBytes(StandardCharsets.UTF_8).length;
            if (eventBytes > limits.maxEventLen) {
                throw new SimpleIoException(
                        "invalid_field", "the event is longer than " + limits.maxEventLen + " bytes");
            }
            String json = writeData(data);
            String id = nextId();
            StringBuilder m = new StringBuilder("{\"id\":\"").append(id).append('"');
            if (!"/".equals(ns.name)) m.append(",\"ns\":").append(JSONObject.quote(ns.name));
            m.append(",\"event\":").append(JSONObject.quote(event)).append(",\"data\":").append(json).append('}');
            enqueue(id, m, future);
        } catch (SimpleIoException e) {
            fail(future, e);
        }
        return future;
    }

    /** A reply message to the server's message at {@code pos} (protocol v1.2). */
    private void reply(long pos, Object value, Message message) {
        try {
            String json = writeData(value);
            String id = nextId();
            StringBuilder m = new StringBuilder("{\"id\":\"").append(id).append('"');
            m.append(",\"reply_to\":").append(pos).append(",\"data\":").append(json).append('}');
            enqueue(id, m, null);
        } catch (SimpleIoException e) {
            report(() -> connection.onListenerError(message, e));
        }
    }

    private String writeData(Object data) throws SimpleIoException {
        String json;
        try {
            json = Json.write(data, limits.maxDataDepth);
        } catch (Json.Unwritable e) {
            throw new SimpleIoException(e.code, e.getMessage());
        }
        if (json.getBytes(StandardCharsets.UTF_8).length > limits.maxMessageBytes) {
            throw new SimpleIoException(
                    "message_too_large", "the data is larger than " + limits.maxMessageBytes + " bytes");
        }
        return json;
    }

    private String nextId() {
        synchronized (lock) {
            return instance + "-" + (++counter);
        }
    }

    private void enqueue(String id, StringBuilder json, CompletableFuture<Object> future)
            throws SimpleIoException {
        synchronized (lock) {
            if (closed) throw new SimpleIoException("closed", "the client is closed");
            outbox.add(new Outgoing(id, json.toString(), future));
            lock.notifyAll();
        }
    }

    /** The send loop (spec §4, §8): one POST at a time, the outbox's first messages. */
    private void sendLoop() {
        int attempts = 0;
        int limit = Integer.MAX_VALUE;
        // Lowered for good after `too_many_messages` (spec §5).
        int cap = Integer.MAX_VALUE;
        while (true) {
            List<Outgoing> batch = new ArrayList<>();
            String sender;
            synchronized (lock) {
                while (!closed && (outbox.isEmpty() || holding > 0)) {
                    waitOn(0);
                }
                if (closed) return;
                long now = now();
                for (Outgoing m : new ArrayList<>(outbox)) {
                    // Past the server's dedup window a resend could be handled twice (§4).
                    if (m.firstSent >= 0 && now - m.firstSent > dedupWindowMs) {
                        outbox.remove(m);
                        fail(m, new SimpleIoException("expired", "no answer within the dedup window"));
                    }
                }
                if (outbox.isEmpty()) continue;
                // One client id per POST: the first message's (once sent, always the same), and
                // the messages after it sent with it; one not sent yet only under the current id,
                // never under one a take-over left to another instance (§3 step 6).
                Outgoing first = outbox.peekFirst();
                String current = clientId;
                sender = first.clientId != null ? first.clientId : current;
                int size = Math.min(Math.min(limit, cap), limits.maxMessages);
                long body = 40 + sender.length();
                for (Outgoing m : outbox) {
                    if (batch.size() >= size) break;
                    if (!(m.clientId != null ? m.clientId : current).equals(sender)) break;
                    if (!batch.isEmpty() && body + m.bytes + 1 > limits.maxBody) break;
                    body += m.bytes + 1;
                    batch.add(m);
                }
                for (Outgoing m : batch) {
                    if (m.clientId == null) {
                        m.clientId = sender;
                        m.firstSent = now;
                    }
                }
            }
            StringBuilder body = new StringBuilder("{\"client\":\"").append(sender).append("\",\"messages\":[");
            for (int i = 0; i < batch.size(); i++) {
                if (i > 0) body.append(',');
                body.append(batch.get(i).json);
            }
            body.append("]}");
            SimpleIoException failure;
            try {
                Http.Answer answer = Http.exchange(route, "POST", body.toString(), headers(), postTimeoutMs, posting, () -> closed);
                if (answer.status >= 200 && answer.status < 300) {
                    JSONArray acks = acks(answer.body);
                    if (acks != null) {
                        attempts = 0;
                        limit = Integer.MAX_VALUE;
                        long wait = settle(batch, acks);
                        if (wait > 0) sleep(wait, false);
                        continue;
                    }
                    failure = new SimpleIoException("bad_response", "the answer is not the protocol's JSON", answer.status, -1, null);
                } else {
                    failure = answer.failure();
                }
            } catch (IOException e) {
                if (closed) return;
                failure = new SimpleIoException("network", String.valueOf(e.getMessage()), 0, -1, e);
            }
            if (closed) return;
            int status = failure.status();
            String code = failure.code();
            boolean unauthorized = status == 401 || status == 403;
            if (status == 400 && "duplicate_id".equals(code)) {
                // Never split (§5): the halves would carry one id with two contents.
                failDuplicates(batch, failure);
            } else if ((status == 400 && !"body_unreadable".equals(code)) || status == 413) {
                // None of the batch was handled (§5): split until the culprit is alone.
                if (batch.size() > 1) {
                    limit = batch.size() / 2;
                    if ("too_many_messages".equals(code)) cap = limit;
                } else {
                    drop(batch, failure);
                }
            } else if (unauthorized) {
                SimpleIoException refusal = failure;
                report(() -> connection.onError(refusal));
                sleep(longestBackoff(), true);
            } else if (status == 429 || status == 503 || status == 408 || status == 400
                    || status == 0 || status >= 500 || status < 300) {
                sleep(backoff(attempts++, failure), true);
            } else {
                // 405, 415, any other 4xx: this request will never succeed (§5).
                drop(batch, failure);
            }
        }
    }

    /** The acks of a POST answer, or {@code null} if it is not the protocol's JSON. */
    private static JSONArray acks(String body) {
        try {
            Object parsed = Json.parse(body);
            return parsed instanceof JSONObject ? ((JSONObject) parsed).optJSONArray("acks") : null;
        } catch (JSONException e) {
            return null;
        }
    }

    /**
     * Resolves the batch's messages by their acks (matched by id). Pending ones, and those with
     * no ack, stay at the front of the outbox, in order. Returns how long to wait before sending
     * again: the longest {@code retry_after_ms} of those kept, 0 if none was kept.
     */
    private long settle(List<Outgoing> batch, JSONArray acks) {
        Map<String, JSONObject> byId = new LinkedHashMap<>();
        for (int i = 0; i < acks.length(); i++) {
            JSONObject ack = acks.optJSONObject(i);
            if (ack != null && ack.opt("id") instanceof String) byId.put(ack.optString("id"), ack);
        }
        long wait = 0;
        for (Outgoing m : batch) {
            JSONObject ack = byId.get(m.id);
            if (ack == null || ack.optBoolean("pending", false)) {
                long after = ack == null ? PENDING_DEFAULT_MS : ack.optLong("retry_after_ms", PENDING_DEFAULT_MS);
                wait = Math.max(wait, Math.max(after, 1));
            } else if (ack.has("error")) {
                JSONObject error = ack.optJSONObject("error");
                String code = error == null ? null : error.optString("code", null);
                String text = error == null ? "failed" : error.optString("message", "failed");
                remove(m);
                fail(m, new SimpleIoException(code, text));
            } else if (ack.has("reply")) {
                remove(m);
                Object reply = Json.unwrapNull(Json.decode(ack.opt("reply")));
                if (m.future != null) report(() -> m.future.complete(reply));
            } else {
                wait = Math.max(wait, PENDING_DEFAULT_MS);
            }
        }
        return wait;
    }

    private void failDuplicates(List<Outgoing> batch, SimpleIoException failure) {
        Map<String, Integer> seen = new LinkedHashMap<>();
        for (Outgoing m : batch) seen.merge(m.id, 1, Integer::sum);
        List<Outgoing> shared = new ArrayList<>();
        for (Outgoing m : batch) if (seen.get(m.id) > 1) shared.add(m);
        drop(shared.isEmpty() ? batch : shared, failure);
    }

    private void drop(List<Outgoing> messages, SimpleIoException failure) {
        for (Outgoing m : messages) {
            remove(m);
            fail(m, failure);
        }
    }

    private void remove(Outgoing m) {
        synchronized (lock) {
            outbox.remove(m);
        }
    }

    private void fail(Outgoing m, SimpleIoException error) {
        if (m.future != null) fail(m.future, error);
    }

    private void fail(CompletableFuture<Object> future, SimpleIoException error) {
        report(() -> future.completeExceptionally(error));
    }

    // --- receiving --------------------------------------------------------------------------

    /** The receive loop (spec §3): one long poll at a time, cursor and epoch, dedup by pos. */
    private void receiveLoop() {
        int attempts = 0;
        while (!closed) {
            long wakeupsBefore;
            String ns;
            synchronized (lock) {
                wakeupsBefore = wakeups;
                ns = String.join(",", spaces.keySet());
            }
            BooleanSupplier cut = () -> closed || wakeups != wakeupsBefore;
            SimpleIoException failure;
            try {
                long sentAt = System.nanoTime();
                Http.Answer answer = Http.exchange(pollUrl(ns), "GET", null, headers(), (int) (limits.holdMs + 10_000), getting, cut);
                // A held poll cut on the way (a proxy or timeout shorter than the hold): it
                // confirmed its cursor as it began, so poll again at once, still connected
                // (§5). One that came back sooner is a plain failure, so it cannot spin.
                if ((answer.status == 408 || answer.status == 504)
                        && System.nanoTime() - sentAt >= CUT_HOLD_AFTER_NANOS) {
                    continue;
                }
                if (answer.status >= 200 && answer.status < 300) {
                    if (handle(answer.body)) {
                        attempts = 0;
                        continue;
                    }
                    failure = new SimpleIoException("bad_response", "the answer is not the protocol's JSON", answer.status, -1, null);
                } else {
                    failure = answer.failure();
                }
            } catch (IOException e) {
                if (closed) return;
                // Ended on purpose by wake(): poll again at once, it was no failure.
                if (cut.getAsBoolean()) continue;
                failure = new SimpleIoException("network", String.valueOf(e.getMessage()), 0, -1, e);
            }
            if (closed) return;
            setConnected(false, failure);
            int status = failure.status();
            if (refused(status)) {
                SimpleIoException refusal = failure;
                report(() -> connection.onError(refusal));
            }
            sleep(backoff(attempts++, failure), true);
        }
    }

    /** How long a poll must have been out for a 408 or 504 to be a cut hold (§5). */
    private static final long CUT_HOLD_AFTER_NANOS = 1_000_000_000L;

    /** 4xx (but 408 and 429) and 3xx: this request, as it is, will never succeed (§5). */
    private static boolean refused(int status) {
        return (status >= 300 && status < 500) && status != 408 && status != 429;
    }

    private URL pollUrl(String ns) throws IOException {
        StringBuilder query = new StringBuilder("client=").append(encode(clientId)).append("&ns=").append(encode(ns));
        // Sending the cursor confirms everything up to it (§3): only once delivered.
        if (cursor != null) {
            query.append("&cursor=").append(cursor).append("&epoch=").append(encode(epoch));
        }
        String base = route.toString();
        return new URL(base + (base.contains("?") ? "&" : "?") + query);
    }

    private static String encode(String value) {
        try {
            return URLEncoder.encode(value, "UTF-8");
        } catch (UnsupportedEncodingException e) {
            throw new IllegalStateException(e);
        }
    }

    /** Processes a 200 (spec §3 steps 1-6); false if the body is not the protocol's JSON. */
    private boolean handle(String body) {
        JSONObject answer;
        List<Message> deliveries = new ArrayList<>();
        try {
            Object parsed = Json.parse(body);
            if (!(parsed instanceof JSONObject)) return false;
            answer = (JSONObject) parsed;
            if (!(answer.opt("epoch") instanceof String) || !(answer.opt("cursor") instanceof Number)) return false;
            String newEpoch = answer.getString("epoch");
            JSONObject newLimits = answer.optJSONObject("limits");
            if (newLimits != null) limits.update(newLimits);
            // Step 2: a new epoch means the storage lost its data: every message here is new.
            boolean resynced = epoch != null && !epoch.equals(newEpoch);
            Long last = resynced ? null : cursor;
            JSONArray messages = answer.optJSONArray("messages");
            for (int i = 0; messages != null && i < messages.length(); i++) {
                JSONObject m = messages.getJSONObject(i);
                long pos = m.getLong("pos");
                // Step 3: past the cursor, in order; the rest are duplicates. The local cursor
                // moves per message, so even a repeat inside one answer is dropped.
                if (last == null || pos > last) {
                    last = pos;
                    deliveries.add(message(m, pos, m.optBoolean("ack", false)));
                }
            }
            JSONArray volatiles = answer.optJSONArray("volatile");
            for (int i = 0; volatiles != null && i < volatiles.length(); i++) {
                deliveries.add(message(volatiles.getJSONObject(i), -1, false));
            }
            if (!connected) {
                setConnected(true, null);
                // The server is back: the send loop need not finish its backoff.
                synchronized (lock) {
                    wakeups++;
                    lock.notifyAll();
                }
            }
            if (resynced) report(connection::onResync);
            deliver(deliveries);
            // Step 5: the next GET carries these, and so confirms what was just delivered.
            epoch = newEpoch;
            cursor = answer.getLong("cursor");
            // Step 6: another instance uses our id; take a new one, keep epoch and cursor.
            if (answer.optBoolean("taken_over", false)) clientId = randomId();
            return true;
        } catch (JSONException | ClassCastException e) {
            return false;
        }
    }

    private static Message message(JSONObject m, long pos, boolean ack) throws JSONException {
        String ns = m.isNull("ns") ? "/" : m.getString("ns");
        Object data = Json.unwrapNull(m.opt("data"));
        return new Message(ns, m.getString("event"), data, pos, ack);
    }

    /**
     * Hands the messages to their listeners on the executor and waits until they ran: the
     * next poll's cursor confirms them to their senders, so it is sent only once the
     * application has them (§3).
     */
    private void deliver(List<Message> messages) {
        if (messages.isEmpty()) return;
        CountDownLatch done = new CountDownLatch(1);
        Runnable task =
                () -> {
                    try {
                        for (Message m : messages) dispatch(m);
                    } finally {
                        done.countDown();
                    }
                };
        try {
            executor.execute(task);
        } catch (RejectedExecutionException e) {
            task.run();
        }
        try {
            while (!done.await(50, TimeUnit.MILLISECONDS)) {
                if (closed) return;
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** Runs the listeners of one message; sends its reply if it asks for one (v1.2). */
    private void dispatch(Message m) {
        Namespace space;
        synchronized (lock) {
            space = spaces.get(m.namespace());
        }
        List<Responder> listeners = space == null ? null : space.listeners.get(m.event());
        if (listeners == null || listeners.isEmpty()) return; // no handler: no reply
        Object reply = null;
        boolean failed = false;
        for (Responder listener : listeners) {
            try {
                Object value = listener.respond(m);
                if (reply == null) reply = value;
            } catch (Throwable e) {
                failed = true;
                connection.onListenerError(m, e);
            }
        }
        if (!m.wantsReply() || failed || closed) return;
        if (reply instanceof CompletionStage) {
            ((CompletionStage<?>) reply).whenComplete((value, error) -> {
                if (error != null) {
                    report(() -> connection.onListenerError(m, error));
                } else {
                    reply(m.position(), value, m);
                }
            });
        } else {
            reply(m.position(), reply, m);
        }
    }

    private void setConnected(boolean up, SimpleIoException reason) {
        if (connected == up) return;
        connected = up;
        report(up ? connection::onConnect : () -> connection.onDisconnect(reason));
    }

    // --- shared -----------------------------------------------------------------------------

    /** Runs {@code what} on the executor, where the application's callbacks belong. */
    private void report(Runnable what) {
        try {
            executor.execute(what);
        } catch (RejectedExecutionException e) {
            what.run();
        }
    }

    private Map<String, String> headers() {
        if (headerSupplier == null) return headers;
        Map<String, String> all = new LinkedHashMap<>(headers);
        Map<String, String> more = headerSupplier.get();
        if (more != null) all.putAll(more);
        return all;
    }

    /** Spec §5: {@code min(max, base * 2^attempts) * random(0.5, 1.0)}, a Retry-After a floor. */
    private long backoff(int attempts, SimpleIoException failure) {
        // A refusal waits the longest backoff; `body_unreadable` (an upload that broke) is
        // retried as a network error is (§5).
        long delay = refused(failure.status()) && !"body_unreadable".equals(failure.code())
                ? backoffMax
                : Math.min(backoffMax, backoffBase << Math.min(attempts, 30));
        long jittered = (long) (delay * (0.5 + RANDOM.nextDouble() / 2));
        long floor = failure.retryAfterSeconds() > 0 ? failure.retryAfterSeconds() * 1000 : 0;
        return Math.max(jittered, floor);
    }

    private long longestBackoff() {
        return (long) (backoffMax * (0.5 + RANDOM.nextDouble() / 2));
    }

    /** Sleeps {@code ms}, or less if closed, or (when {@code wakeable}) woken by {@link #wake}. */
    private void sleep(long ms, boolean wakeable) {
        synchronized (lock) {
            long before = wakeups;
            long end = now() + ms;
            for (long left = ms; left > 0 && !closed && !(wakeable && wakeups != before); left = end - now()) {
                waitOn(left);
            }
        }
    }

    private void waitOn(long ms) {
        try {
            lock.wait(ms);
        } catch (InterruptedException e) {
            // The loops end by `closed`, not by interruption; keep the flag for whoever asks.
            Thread.currentThread().interrupt();
            closed = true;
        }
    }

    private static long now() {
        return System.nanoTime() / 1_000_000;
    }

    /** 22 characters from the id alphabet: 132 random bits (spec §2 asks for 16 or more). */
    private static String randomId() {
        char[] id = new char[22];
        for (int i = 0; i < id.length; i++) id[i] = ID_ALPHABET[RANDOM.nextInt(ID_ALPHABET.length)];
        return new String(id);
    }

    /** Settings of a {@link SimpleIo}; {@link #build()} makes the client, not yet connected. */
    public static final class Builder {
        private final URL route;
        private final Map<String, String> headers = new LinkedHashMap<>();
        private Supplier<Map<String, String>> headerSupplier;
        private Executor executor = Runnable::run;
        private ConnectionListener connection = new ConnectionListener() {};
        private final List<String> namespaces = new ArrayList<>();
        private long backoffBaseMs = 500;
        private long backoffMaxMs = 30_000;
        private int postTimeoutMs = 30_000;
        private long dedupWindowMs = 9 * 60_000;

        private Builder(String url) {
            try {
                this.route = new URL(url);
            } catch (MalformedURLException e) {
                throw new IllegalArgumentException("not a URL: " + url, e);
            }
        }

        /** A header sent with every request: the credentials the server's identity expects. */
        public Builder header(String name, String value) {
            headers.put(name, value);
            return this;
        }

        /**
         * Headers computed before each request (on the client's threads), added to those of
         * {@link #header}: e.g. a token refreshed as it expires.
         */
        public Builder headers(Supplier<Map<String, String>> supplier) {
            this.headerSupplier = supplier;
            return this;
        }

        /**
         * Where listeners, {@link ConnectionListener} events and emit futures run: on Android,
         * {@code context.getMainExecutor()} (API 28) or {@code new Handler(Looper.getMainLooper())::post}.
         * By default, on the client's own threads.
         */
        public Builder executor(Executor executor) {
            this.executor = executor;
            return this;
        }

        /** Receives the client's own events: connect, disconnect, errors, resyncs. */
        public Builder connectionListener(ConnectionListener listener) {
            this.connection = listener;
            return this;
        }

        /** Namespaces to receive from the first poll on, besides {@code "/"} (same as {@link SimpleIo#of}). */
        public Builder namespaces(String... names) {
            Collections.addAll(namespaces, names);
            return this;
        }

        /** The retry backoff (spec §5): base and maximum, 500 ms and 30 s by default. */
        public Builder backoff(long baseMs, long maxMs) {
            this.backoffBaseMs = baseMs;
            this.backoffMaxMs = maxMs;
            return this;
        }

        /** The POST timeout, 30 s by default (the server may hold one for its pending wait). */
        public Builder postTimeout(int ms) {
            this.postTimeoutMs = ms;
            return this;
        }

        /**
         * How long an unanswered message is resent before it fails with {@code expired}: 9
         * minutes by default, inside the server's 10-minute dedup window (spec §4).
         */
        public Builder dedupWindow(long ms) {
            this.dedupWindowMs = ms;
            return this;
        }

        /** The client; add listeners, then call {@link SimpleIo#connect()}. */
        public SimpleIo build() {
            return new SimpleIo(this);
        }
    }
}
