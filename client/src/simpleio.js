// simpleio browser client: reliable realtime messaging over HTTP long-polling.
//
// This file implements docs/spec.md (client protocol v1.2) and nothing else; read the two side by
// side. It has no dependencies: `fetch`, `AbortController`, `URL` and `crypto.getRandomValues`
// are in every current browser and in Node 20+. The readable source is what people audit; the
// minifier does the squeezing, so prefer clarity over clever short code here. (Concessions to
// size: the client is a constructor function rather than a class, and its state lives in local
// variables rather than in private fields, because the minifier can shorten those names but not
// `this.#field`.)
//
// Shape of the client (spec §8):
// - a receive loop: one long-poll GET at a time, cursor + epoch, dedup by `pos`;
// - a send loop: one POST at a time, draining an outbox of messages that keep their ids across
//   retries, so a retried POST is never handled twice by the server (spec §4);
// - both loops retry failures with exponential backoff and jitter (spec §5), and are woken early
//   when the browser says the network is back or the tab became visible;
// - namespaces (spec §4a): the client object is `/`, `of(name)` gives a handle with the same
//   on/off/emit for another one; every GET lists them all, so they share the one connection;
// - bytes (spec §4b): typed arrays and ArrayBuffers in emitted data go out as {"$bytes": base64},
//   and every {"$bytes": base64} received comes back as a Uint8Array.

const g = globalThis;

// The key of a namespace's `onAny` listeners among its events: a symbol, so no event name,
// which may be any string, can collide with it.
const ANY = Symbol();

// An Error carrying the protocol's machine-readable `code` (and the HTTP `status` and the
// `Retry-After` seconds when there are), so applications can branch on `err.code` as the spec
// intends.
const fail = (code, message, status, after) =>
  Object.assign(new Error(message), { code, status, after });

// 4xx statuses that mean "this request, as it is, will never succeed" (spec §5). 408 and 429 are
// the server asking us to come back later, so they are retried like a 5xx.
const refused = (status) => status > 399 && status < 500 && status != 408 && status != 429;

// 401/403 belong to the application's identity function: report them, and keep retrying at the
// longest backoff so the client resumes by itself once the user signs in again (spec §5).
const unauthorized = (status) => status == 401 || status == 403;

// Spec §4b, sending: a JSON.stringify replacer, so every ArrayBuffer and view (typed arrays,
// DataView) anywhere in the data becomes {"$bytes": base64} of exactly the bytes it covers.
// (A Node Buffer's toJSON runs before the replacer: pass `new Uint8Array(buffer)`.) Building the
// string byte by byte, rather than `String.fromCharCode(...bytes)`, has no argument-count limit
// (65536 in Safari) for large buffers.
const toWire = (key, value) =>
  ArrayBuffer.isView(value) || value instanceof ArrayBuffer
    ? {
        $bytes: btoa(
          new Uint8Array(value.buffer || value, value.byteOffset, value.byteLength).reduce(
            (text, byte) => text + String.fromCharCode(byte),
            "",
          ),
        ),
      }
    : value;

// Spec §4b, receiving: a JSON.parse reviver, so bytes become Uint8Arrays anywhere in a response
// (message data, replies). Only an object whose one key is `$bytes` holding a string qualifies
// (`Object.keys(value) == "$bytes"` compares the key list joined with commas); invalid base64
// leaves the object as it is rather than failing the whole response.
const fromWire = (key, value) => {
  try {
    if (typeof value?.$bytes == "string" && Object.keys(value) == "$bytes") {
      value = Uint8Array.from(atob(value.$bytes), (c) => c.charCodeAt());
    }
  } catch {}
  return value;
};

/**
 * A simpleio client: one per tab (or process); `new SimpleIO(url, options)` creates one and
 * starts receiving at once. See client/dist/simpleio.d.ts for the API.
 * @param {string | URL} [url] the route; default: the page's origin + "/simpleio"
 * @param {object} [options] see the defaults below and simpleio.d.ts
 */
export function SimpleIO(url, options) {
  // connect(options) with the default URL.
  if (url && typeof url == "object" && !(url instanceof URL)) [url, options] = [0, url];
  // Outside a browser there is no page to resolve a default route against: say so, rather
  // than let `new URL` throw a bare "Invalid URL".
  if (!(url || g.location)) throw fail("no_url", "connect() needs a URL outside a browser");
  const o = {
    // Request timeout: a little above the server's hold time (25 s by default, spec §5). POSTs
    // use it too: a handler slower than this is treated like a lost response and retried
    // (same ids).
    timeout: 35e3,
    // POSTs: the server may hold one for its pending wait plus the handler's time (spec §4).
    postTimeout: 3e4,
    // Backoff: min(max, base * 2^attempts) * random(0.5, 1.0) (spec §5).
    backoffBase: 500,
    backoffMax: 30e3,
    // How long a message sent but never answered is resent (spec §4: 9 minutes, inside the
    // server's 10-minute dedup window). Past it, it is reported as failed instead, since a
    // resend after the window could be handled a second time.
    dedupWindow: 54e4,
    ...options,
  };
  // Relative URLs resolve against the page; outside a browser (Node) the URL must be absolute.
  const route = new URL(url || "/simpleio", g.location?.href);
  // The client id (spec §2): 128 random bits as four decimal numbers joined by `_` (16+
  // characters, but for odds of about 2^-40), kept for this object's life. getRandomValues,
  // unlike randomUUID, also works on plain-http pages.
  // A new one on `taken_over` (spec §3 step 6): then another instance polls with ours.
  const newId = () => (this.id = crypto.getRandomValues(new Uint32Array(4)).join("_"));
  let id = newId();
  /** True between a `connect` and the next `disconnect`: the last poll got an answer. */
  this.connected = false;

  // The latest `cursor` and `epoch` the server gave us; none until the first answer (spec §3).
  let cursor;
  let epoch;
  // Listeners by namespace, then event name.
  const listeners = {};
  // The handles by namespace name, this object as `/`: their names are the GET's `ns`.
  const spaces = {};
  // Messages not yet acknowledged, in emit order: {id, json, t (first sent), resolve, reject}.
  const outbox = [];
  // The counter behind message ids `clientId-n`.
  let counter = 0;
  // Messages per POST (spec §6); halved for good if the server says `too_many_messages`.
  let maxBatch = 100;
  // True while the send loop runs, so there is only ever one POST in flight (spec §4).
  let sending = false;
  let closed = false;
  // The AbortControllers of the GET and the POST in flight, so close() and wake-ups can end
  // them.
  let getting;
  let posting;
  // Set when we aborted the waiting GET on purpose, so its rejection is not taken for a failure.
  let woken = false;
  // Ends of the backoff sleeps in progress; calling one ends its sleep early.
  const sleepers = new Set();

  // Calls the listeners of `event` in namespace `ns`. A listener that throws must not break the
  // loops (the cursor would not move and already-delivered messages would come again), so its
  // error is rethrown on its own, where the page's console or error handler reports it.
  // Returns `[value]` of the last listener that returned, if any did.
  const deliver = (ns, event, arg) => {
    let out;
    for (const fn of [...(listeners[ns]?.[event] || [])]) {
      try {
        out = [fn(arg)];
      } catch (err) {
        setTimeout(() => {
          throw err;
        });
      }
    }
    return out;
  };
  // A message from the server, to the `onAny` listeners of its namespace (absent: `/`), then
  // to the listeners of its event there. For one that asks for a reply (spec §4c), the event
  // listener's value, or what its promise resolves to, goes back as a reply message, queued
  // like an emit; no listener, no reply.
  const fire = (m, r = (deliver(m.ns || "/", ANY, m), deliver(m.ns || "/", m.event, m.data))) =>
    m.ack &&
    r &&
    Promise.resolve(r[0])
      .then((data) => queue({ reply_to: m.pos, data }))
      .catch(String);
  // Puts a message (its fields but `id`) in the outbox, settling `resolve`/`reject` with its ack.
  // Serialized now, so a later change to its data by the application does not change what a
  // retry sends (the server dedups by id, the content must not drift), and so an
  // unserializable value (a cycle, a BigInt) throws here rather than jamming the outbox.
  const queue = (o, resolve = String, reject = String, timeout) => {
    if (closed) throw fail("closed", "the client is closed");
    const mid = `${id}-${++counter}`;
    const m = { id: mid, json: JSON.stringify({ id: mid, ...o }, toWire), resolve, reject };
    // A message that went out (`t`, its first send, is set) stays in the outbox after its
    // timeout: it may have reached the handler, and only its answer tells; resending it with
    // its id is what keeps it handled at most once.
    if (timeout) {
      m.timer = setTimeout(
        (err) => (m.t ? reject(err) : settle(m, err)),
        timeout,
        fail("timeout", "no answer in time"),
      );
    }
    outbox.push(m);
    // Wait a microtask so messages queued in the same tick share one POST.
    queueMicrotask(send);
  };
  // The client's own events (connect, disconnect, error) go to every handle's listeners.
  const report = (event, arg) => {
    for (const ns in spaces) deliver(ns, event, arg);
  };

  const setConnected = (up, reason) => {
    if (this.connected != up) {
      this.connected = up;
      report(up ? "connect" : "disconnect", reason);
    }
  };

  // Removes a message from the outbox and settles its emit() promise.
  const settle = (m, err, reply) => {
    clearTimeout(m.timer);
    outbox.splice(outbox.indexOf(m), 1);
    err ? m.reject(err) : m.resolve(reply);
  };

  // Spec §5: min(max, base * 2^attempts) * random(0.5, 1.0); the longest wait for a request
  // the server refuses (a bug or a signed-out user), so a client never hammers the server.
  // A `Retry-After` (429, 503) is a floor.
  const backoff = (attempts, err) =>
    Math.max(
      (refused(err.status) ? o.backoffMax : Math.min(o.backoffMax, o.backoffBase * 2 ** attempts)) *
        (0.5 + Math.random() / 2),
      err.after * 1e3 || 0,
    );

  // A sleep that wake() can cut short.
  const sleep = (ms) =>
    new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        sleepers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      sleepers.add(done);
    });
  const wake = () => sleepers.forEach((done) => done());

  // One HTTP request to the route: a GET (no body) or a POST. Resolves with the parsed JSON
  // of a 2xx; rejects with a network error, a timeout, or a `fail()` built from the error body.
  const request = async (body) => {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), body ? o.postTimeout : o.timeout);
    const url = new URL(route);
    if (body) {
      posting = ctl;
    } else {
      getting = ctl;
      url.searchParams.set("client", id);
      // Every namespace with a handle; an array's toString joins them with commas.
      url.searchParams.set("ns", Object.keys(spaces));
      // Sending the cursor confirms everything up to it (spec §3): only once delivered.
      if (cursor != null) {
        url.searchParams.set("cursor", cursor);
        url.searchParams.set("epoch", epoch);
      }
    }
    try {
      const { headers } = o;
      const res = await (o.fetch || g.fetch)(url, {
        method: body ? "POST" : "GET",
        body,
        // `headers` may be a function, so a token can be refreshed before each request.
        headers: {
          ...(body && { "content-type": "application/json" }),
          ...(typeof headers == "function" ? await headers() : headers),
        },
        credentials: o.credentials,
        signal: ctl.signal,
      });
      if (!res.ok) {
        // Every error on the route has a {"error": {code, message}} body (spec §5), except
        // perhaps one from a proxy in between, or the application's own 401/403.
        const { error = {} } = (await res.json().catch(() => 0)) || {};
        throw fail(
          error.code,
          error.message || `HTTP ${res.status}`,
          res.status,
          res.headers.get("retry-after"),
        );
      }
      return JSON.parse(await res.text(), fromWire);
    } finally {
      clearTimeout(timer);
    }
  };

  // The receive loop (spec §3).
  const receive = async () => {
    let attempts = 0;
    while (!closed) {
      woken = false;
      const sent = Date.now();
      let res;
      try {
        res = await request();
      } catch (err) {
        if (closed) return;
        // We aborted it to re-poll at once; or something in between with a timeout shorter than
        // the server's hold (a proxy's 504, a `TimeoutLayer`'s 408) cut a held poll: not an
        // outage, so poll again at once, still connected. One that comes within a second is
        // no held poll cut short but a failure (backoff), lest it spin.
        if (woken || ([408, 504].includes(err.status) && Date.now() - sent > 999)) continue;
        setConnected(false, err);
        if (refused(err.status)) report("error", err);
        await sleep(backoff(attempts++, err));
        continue;
      }
      attempts = 0;
      // The server's limits, from the handshake (spec §6): at most this many per POST.
      if (res.limits) maxBatch = res.limits.max_messages || maxBatch;
      if (!this.connected) {
        setConnected(true);
        // The server is back: the send loop need not finish its backoff.
        wake();
      }
      // Step 2: a new epoch means the server's storage lost its data: every message of this
      // answer is new to us (positions do not start again; they stay above old cursors).
      if (epoch != null && res.epoch !== epoch) cursor = null;
      // Step 2: deliver in order what is past the cursor; the rest are duplicates. The local
      // cursor also moves per message, so even a repeat inside one answer is dropped.
      let last = cursor;
      for (const m of res.messages || []) {
        if (last == null || m.pos > last) {
          last = m.pos;
          fire(m);
        }
      }
      // Step 3: volatile messages have no position; each comes once.
      for (const m of res.volatile || []) fire(m);
      // Step 5: the next GET carries these, and so confirms what we just delivered.
      epoch = res.epoch;
      cursor = res.cursor;
      // Step 6: another instance uses our id (a copy of this page's state); take a new one
      // rather than end each other's polls without end.
      if (res.taken_over) id = newId();
    }
  };

  // The send loop (spec §4): one POST at a time, the first `limit` messages of the outbox.
  const send = async () => {
    if (sending) return;
    sending = true;
    let attempts = 0;
    let limit = maxBatch;
    while (!closed && outbox.length) {
      const now = Date.now();
      for (const m of [...outbox]) {
        if (now - m.t > o.dedupWindow) {
          settle(m, fail("expired", "no answer in time"));
        }
      }
      // A message goes out, and out again, under the client id it was first sent with: the
      // server tells messages apart by client id and message id (spec §4).
      // A message not sent yet goes out under the current id only, never under one a take-over
      // left to another instance (spec §3 step 6).
      const c = (outbox[0].c ??= id);
      const batch = outbox.slice(0, limit).filter((m) => (m.c ?? id) == c && (m.c = c));
      if (!batch.length) break;
      for (const m of batch) m.t ??= now;
      let wait = 0;
      try {
        // The messages are already JSON; an array's toString joins them with commas.
        const body = `{"client":"${c}","messages":[${batch.map((m) => m.json)}]}`;
        const { acks } = await request(body);
        attempts = 0;
        limit = maxBatch;
        for (const m of batch) {
          const ack = acks.find((a) => a.id == m.id);
          // `pending`: not handled yet (an earlier POST with this id is still being handled,
          // or one before it in the batch is); no ack at all is the same. Keep the message
          // (same id) and ask again after the longest of the server's `retry_after_ms`, 250 ms
          // where it does not say (spec §8).
          if (!ack || ack.pending) wait = Math.max(wait, ack?.retry_after_ms || 250);
          else if (ack.error) settle(m, fail(ack.error.code, ack.error.message));
          else settle(m, 0, ack.reply);
        }
      } catch (err) {
        if (closed) break;
        const status = err.status;
        // 400 and 413 are about this batch's content; another refusal (405, 415, 404 from a
        // wrong URL, ...) is a bug that splitting would only meet once per message (spec §8).
        // `duplicate_id` is never split either (the halves would carry one id with two
        // contents, spec §5): it fails the messages sharing an id, which from this client,
        // whose ids never repeat, can only be a bug too: the whole batch fails.
        const content = (status == 400 || status == 413) && err.code != "duplicate_id";
        if (refused(status) && !unauthorized(status) && !content) {
          for (const m of batch) settle(m, err);
          continue;
        }
        // `body_unreadable`: the upload broke on the way; sent again, it goes through.
        if (content && err.code != "body_unreadable") {
          // This request will never succeed as it is (spec §5: 400, 413). Split the batch
          // until the culprit is alone, then fail that one message: the others must not be
          // dropped with it.
          if (batch.length > 1) {
            limit = batch.length >> 1;
            if (err.code == "too_many_messages") maxBatch = limit;
          } else {
            settle(batch[0], err);
          }
          continue;
        }
        if (unauthorized(status)) report("error", err);
        wait = backoff(attempts++, err);
      }
      if (wait) await sleep(wait);
    }
    sending = false;
  };

  // A laptop waking up or a phone switching networks leaves a poll hanging on a dead
  // connection until its timeout; a tab in the background may have had its timers throttled.
  // So when the network comes back or the tab is shown again, drop the waiting poll and ask
  // again now (cheap: the cursor only moves on an answer, so nothing is lost), and cut any
  // backoff short. `window`/`document` are absent in Node and workers: hence the `?.`.
  const revive = () => {
    woken = true;
    getting?.abort();
    wake();
  };
  const visible = () => g.document.hidden || revive();
  // One abort removes both listeners at close(). The controller itself is the options
  // argument: its `signal` property is the option of that name.
  const listening = new AbortController();
  g.addEventListener?.("online", revive, listening);
  g.document?.addEventListener("visibilitychange", visible, listening);

  // Gives `handle` the on/off/emit of namespace `ns` (spec §4a) and lists it in the next GETs.
  const space = (handle, ns) => {
    spaces[ns] = handle;
    const mine = (listeners[ns] = {});

    /** Calls `fn(data)` for each message `event`; also "connect", "disconnect" and "error". */
    handle.on = (event, fn) => {
      (mine[event] ||= []).push(fn);
      return handle;
    };

    /** Removes `fn` from `event`, or every listener of `event` if `fn` is omitted. A listener
     * added by `once` or `onAny` is a wrapper that knows its `fn`, so `fn` removes it too. */
    handle.off = (event, fn) => {
      mine[event] = (mine[event] || []).filter((f) => fn && f != fn && f.fn != fn);
      return handle;
    };

    /** Calls `fn(data)` for the next message `event` only (or reserved event). */
    handle.once = (event, fn) => {
      const f = (data) => (handle.off(event, f), fn(data));
      f.fn = fn;
      return handle.on(event, f);
    };

    /** Calls `fn(event, data)` for every message of this namespace, before its event's
     * listeners; not for the reserved events. */
    handle.onAny = (fn) => {
      const f = (m) => fn(m.event, m.data);
      f.fn = fn;
      return handle.on(ANY, f);
    };

    /** Removes `fn` from the `onAny` listeners, or all of them if `fn` is omitted. */
    handle.offAny = (fn) => handle.off(ANY, fn);

    /**
     * Sends `event` with `data` to the namespace's handler. Resolves with the handler's reply,
     * or rejects with its error (`err.code`), or if the message cannot be delivered (`closed`,
     * `expired`, or a 4xx refusing this very message). Never rejects on a transient failure:
     * the message waits in the outbox and is retried, with the same id, until it gets an
     * answer — unless `timeout` (ms) passes first: then it rejects with code `timeout`, and
     * the message is dropped if it was never sent, or else still resent until answered (so it
     * may yet be handled, once).
     */
    handle.emit = (event, data, opts) =>
      // `ns` is left out for `/` (undefined is not serialized).
      new Promise((resolve, reject) =>
        queue({ ns: ns[1] && ns, event, data }, resolve, reject, opts?.timeout),
      );

    return handle;
  };
  space(this, "/");

  /**
   * The handle of namespace `ns`, the same one each time. A namespace is in every GET from the
   * first one after `of()`: made in the same tick as the client, it is in the very first; made
   * later, the waiting GET is ended so the next one, sent at once, includes it.
   */
  this.of = (ns) => spaces[ns] || (revive(), space({}, ns));

  /** Stops the client: aborts the requests in flight, sends no more, rejects pending emits. */
  this.close = () => {
    if (closed) return;
    closed = true;
    listening.abort();
    getting?.abort();
    posting?.abort();
    wake();
    const err = fail("closed", "the client is closed");
    for (const m of [...outbox]) settle(m, err);
    setConnected(false, err);
  };

  // In a microtask, so namespaces made with `of()` right after the client are in the first GET.
  queueMicrotask(receive);
}

/** Creates a client and starts receiving at once; see SimpleIO. */
export const connect = (url, options) => new SimpleIO(url, options);
