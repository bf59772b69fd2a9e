// The client's protocol rules (spec §3–§5) against a scripted `fetch`, for the cases a real
// server does not produce on demand: an epoch change, a repeated message, a wake-up.
// Needs no server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { SimpleIO } from "../src/simpleio.js";
import { collect, scripted, sleep, until } from "./helpers.mjs";

const URL_ = "http://simpleio.test/simpleio";

const msg = (pos, data) => ({ pos, event: "m", data });

test("the first poll sends no cursor; later ones confirm the last answer's cursor and epoch", async (t) => {
  const s = scripted([{ epoch: "e1", cursor: 2, messages: [msg(1, "a"), msg(2, "b")], volatile: [] }]);
  const io = new SimpleIO(URL_, { fetch: s.fetch });
  t.after(() => io.close());
  await until("a second poll", () => s.gets().length == 2);
  const [first, second] = s.gets().map((r) => r.url.searchParams);
  assert.equal(first.get("client"), io.id);
  assert.ok(!first.has("cursor") && !first.has("epoch"));
  assert.equal(second.get("cursor"), "2");
  assert.equal(second.get("epoch"), "e1");
  assert.match(io.id, /^[A-Za-z0-9_-]{16,64}$/);
});

test("messages at or below the cursor are dropped as duplicates", async (t) => {
  const got = [];
  const s = scripted([
    { epoch: "e1", cursor: 2, messages: [msg(1, "a"), msg(2, "b")], volatile: [] },
    // The same messages again (a confirmation that never arrived), then a new one.
    { epoch: "e1", cursor: 3, messages: [msg(2, "b"), msg(3, "c"), msg(3, "c")], volatile: [] },
  ]);
  const io = new SimpleIO(URL_, { fetch: s.fetch }).on("m", (d) => got.push(d));
  t.after(() => io.close());
  await until("a third poll", () => s.gets().length == 3);
  assert.deepEqual(got, ["a", "b", "c"]);
});

test("a new epoch resets the cursor: every message of its answer is delivered", async (t) => {
  const got = [];
  const s = scripted([
    { epoch: "e1", cursor: 5, messages: [msg(5, "old")], volatile: [] },
    { epoch: "e2", cursor: 1, messages: [msg(1, "new")], volatile: [] },
  ]);
  const io = new SimpleIO(URL_, { fetch: s.fetch }).on("m", (d) => got.push(d));
  t.after(() => io.close());
  await until("a third poll", () => s.gets().length == 3);
  assert.deepEqual(got, ["old", "new"]);
  const third = s.gets()[2].url.searchParams;
  assert.equal(third.get("epoch"), "e2");
  assert.equal(third.get("cursor"), "1");
});

test("volatile messages are delivered, after the stored ones of the same answer", async (t) => {
  const got = [];
  const s = scripted([
    { epoch: "e", cursor: 1, messages: [msg(1, "stored")], volatile: [{ event: "m", data: "v" }] },
  ]);
  const io = new SimpleIO(URL_, { fetch: s.fetch }).on("m", (d) => got.push(d));
  t.after(() => io.close());
  await until("both", () => got.length == 2);
  assert.deepEqual(got, ["stored", "v"]);
});

test("a listener that throws does not stop delivery or the cursor", async (t) => {
  const got = [];
  const s = scripted([{ epoch: "e", cursor: 2, messages: [msg(1, 1), msg(2, 2)], volatile: [] }]);
  // The listener's error is rethrown from a timer, where a page's error handler sees it;
  // catch it there, as the test runner would otherwise fail the test for it.
  const uncaught = [];
  const realSetTimeout = globalThis.setTimeout;
  globalThis.setTimeout = (fn, ms) =>
    realSetTimeout(() => {
      try {
        fn();
      } catch (e) {
        uncaught.push(e);
      }
    }, ms);
  t.after(() => (globalThis.setTimeout = realSetTimeout));
  const io = new SimpleIO(URL_, { fetch: s.fetch })
    .on("m", () => { throw new Error("listener bug"); })
    .on("m", (d) => got.push(d));
  t.after(() => io.close());
  await until("a second poll", () => s.gets().length == 2);
  await sleep(10);
  assert.deepEqual(got, [1, 2]);
  assert.equal(s.gets()[1].url.searchParams.get("cursor"), "2");
  assert.equal(uncaught.length, 2);
});

test("emits in one tick share one POST, with ids clientId-counter", async (t) => {
  const s = scripted([]);
  const io = new SimpleIO(URL_, { fetch: s.fetch });
  t.after(() => io.close());
  assert.deepEqual(await Promise.all([io.emit("a", 1), io.emit("b"), io.emit("c", { x: [1] })]), [1, undefined, { x: [1] }]);
  const posts = s.requests.filter((r) => r.init.method == "POST");
  assert.equal(posts.length, 1);
  const body = JSON.parse(posts[0].init.body);
  assert.equal(body.client, io.id);
  assert.deepEqual(body.messages.map((m) => m.id), [1, 2, 3].map((n) => `${io.id}-${n}`));
  assert.equal(posts[0].init.headers["content-type"], "application/json");
});

test("an unserializable message rejects at once and does not jam the outbox", async (t) => {
  const s = scripted([]);
  const io = new SimpleIO(URL_, { fetch: s.fetch });
  t.after(() => io.close());
  await assert.rejects(io.emit("big", 1n), TypeError);
  assert.equal(await io.emit("ok", 2), 2);
});

test("the `online` event and a tab becoming visible end the waiting poll and poll again at once", async (t) => {
  // Node has neither `window` nor `document`: stand them in for this test.
  const win = new EventTarget();
  const doc = Object.assign(new EventTarget(), { hidden: true });
  globalThis.addEventListener = win.addEventListener.bind(win);
  globalThis.removeEventListener = win.removeEventListener.bind(win);
  globalThis.document = doc;
  t.after(() => {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
    delete globalThis.document;
  });
  const s = scripted([]);
  const io = new SimpleIO(URL_, { fetch: s.fetch });
  const disconnects = [];
  io.on("disconnect", (e) => disconnects.push(e));
  await until("the first poll", () => s.gets().length == 1);
  win.dispatchEvent(new Event("online"));
  await until("a second poll", () => s.gets().length == 2);
  assert.ok(s.gets()[0].init.signal.aborted, "the waiting poll was aborted");
  doc.dispatchEvent(new Event("visibilitychange")); // still hidden: nothing happens
  await sleep(20);
  assert.equal(s.gets().length, 2);
  doc.hidden = false;
  doc.dispatchEvent(new Event("visibilitychange"));
  await until("a third poll", () => s.gets().length == 3);
  assert.deepEqual(disconnects, [], "a wake-up is not a failure");
  io.close();
  win.dispatchEvent(new Event("online")); // listeners are gone after close()
  await sleep(20);
  assert.equal(s.gets().length, 3);
});

test("failures back off exponentially, with jitter", async () => {
  const times = [];
  let fails = 5;
  const fetch = (url, init) => {
    if (init.method == "GET") times.push(performance.now());
    if (fails-- > 0) return Promise.reject(new TypeError("down"));
    return new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(new Error("aborted"))));
  };
  const io = new SimpleIO(URL_, { fetch, backoffBase: 20, backoffMax: 1000 });
  await until("six polls", () => times.length == 6);
  io.close();
  const waits = times.slice(1).map((t, i) => t - times[i]);
  // wait_n is in [0.5, 1] × 20 × 2^n ms. Timers never fire early, so the lower bounds are
  // strict (they alone prove the growth); the upper ones leave room for a busy machine.
  waits.forEach((w, n) => {
    assert.ok(w >= 0.5 * 20 * 2 ** n - 2, `wait ${n} = ${w} ms is not below its range`);
    assert.ok(w <= 20 * 2 ** n + 250, `wait ${n} = ${w} ms is not far above its range`);
  });
});

test("a 5xx is retried with backoff; a 4xx poll raises `error`", async (t) => {
  const answers = [
    Response.json({ error: { code: "storage_unavailable", message: "down" } }, { status: 503 }),
    Response.json({ error: { code: "unauthorized", message: "sign in" } }, { status: 401 }),
  ];
  const errors = [];
  const fetch = (url, init) =>
    answers.length
      ? Promise.resolve(answers.shift())
      : new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(new Error("aborted"))));
  const io = new SimpleIO(URL_, { fetch, backoffBase: 1, backoffMax: 5 });
  t.after(() => io.close());
  io.on("error", (e) => errors.push(e));
  await until("the 401", () => errors.length == 1);
  assert.equal(errors[0].status, 401);
  assert.equal(errors[0].code, "unauthorized");
});

test("namespaces: every GET lists `/` and each handle; messages go to their namespace's handle", async (t) => {
  const s = scripted([
    {
      epoch: "e",
      cursor: 4,
      messages: [
        { pos: 1, event: "m", data: "root" },
        { pos: 2, ns: "/chat", event: "m", data: "chat" },
        { pos: 3, ns: "/unlisted", event: "m", data: "nobody's" },
        { pos: 4, ns: "/", event: "m", data: "root, named" },
      ],
      volatile: [{ ns: "/chat", event: "typing", data: "v" }],
    },
  ]);
  const io = new SimpleIO(URL_, { fetch: s.fetch });
  t.after(() => io.close());
  // Made in the same tick as the client: in the very first GET.
  const chat = io.of("/chat");
  const got = [];
  io.on("m", (d) => got.push(["/", d])).on("typing", (d) => got.push(["/ typing", d]));
  chat.on("m", (d) => got.push(["/chat", d])).on("typing", (d) => got.push(["/chat typing", d]));
  await until("a second poll", () => s.gets().length == 2);
  assert.deepEqual(s.gets().map((r) => r.url.searchParams.get("ns")), ["/,/chat", "/,/chat"]);
  assert.deepEqual(got, [["/", "root"], ["/chat", "chat"], ["/", "root, named"], ["/chat typing", "v"]]);
  // emit sets `ns`, except for `/`, where it is left out.
  await Promise.all([io.emit("a"), chat.emit("b", 1)]);
  const [post] = s.requests.filter((r) => r.init.method == "POST");
  assert.deepEqual(JSON.parse(post.init.body).messages.map(({ ns, event }) => [ns, event]), [[undefined, "a"], ["/chat", "b"]]);
  // off() works per handle.
  chat.off("m");
  assert.equal(io.of("/chat"), chat);
});

test("a namespace added later ends the waiting poll; the next GET lists it", async (t) => {
  const s = scripted([]);
  const io = new SimpleIO(URL_, { fetch: s.fetch });
  t.after(() => io.close());
  const errors = collect(io, "disconnect");
  await until("the first poll", () => s.gets().length == 1);
  io.of("/news");
  await until("a second poll", () => s.gets().length == 2);
  assert.ok(s.gets()[0].init.signal.aborted);
  assert.deepEqual(s.gets().map((r) => r.url.searchParams.get("ns")), ["/", "/,/news"]);
  assert.deepEqual(errors, [], "not a failure");
});

test("bytes: views and ArrayBuffers go out as {$bytes}; {$bytes} alone comes back as a Uint8Array", async (t) => {
  const s = scripted([
    {
      epoch: "e",
      cursor: 1,
      messages: [
        {
          pos: 1,
          event: "m",
          data: {
            png: { $bytes: "AJ+Slg==" },
            list: [{ $bytes: "" }, { $bytes: "/w==" }],
            // Not bytes: another key, a value that is not a string, base64 that is not.
            other: { $bytes: "AA==", x: 1 },
            number: { $bytes: 12 },
            broken: { $bytes: "!!" },
          },
        },
      ],
      volatile: [],
    },
  ]);
  const io = new SimpleIO(URL_, { fetch: s.fetch });
  t.after(() => io.close());
  const got = collect(io, "m");
  await until("the message", () => got.length == 1);
  assert.deepEqual(got[0], {
    png: new Uint8Array([0, 159, 146, 150]),
    list: [new Uint8Array(0), new Uint8Array([255])],
    other: { $bytes: "AA==", x: 1 },
    number: { $bytes: 12 },
    broken: { $bytes: "!!" },
  });
  const bytes = new Uint8Array([0, 159, 146, 150, 7]);
  const reply = await io.emit("up", { a: bytes.subarray(0, 4), b: [bytes.buffer], c: new DataView(bytes.buffer, 4), d: "text" });
  const [post] = s.requests.filter((r) => r.init.method == "POST");
  assert.deepEqual(JSON.parse(post.init.body).messages[0].data, {
    a: { $bytes: "AJ+Slg==" },
    b: [{ $bytes: "AJ+Slgc=" }],
    c: { $bytes: "Bw==" },
    d: "text",
  });
  // The fake server echoes the data back as the reply: bytes again.
  assert.deepEqual(reply, { a: bytes.subarray(0, 4).slice(), b: [bytes], c: new Uint8Array([7]), d: "text" });
});

test("the `credentials` option is passed to fetch", async (t) => {
  const s = scripted([]);
  const io = new SimpleIO(URL_, { fetch: s.fetch, credentials: "include" });
  t.after(() => io.close());
  await io.emit("x");
  await until("a poll", () => s.gets().length == 1);
  assert.deepEqual(s.requests.map((r) => r.init.credentials), ["include", "include"]);
});

test("without a page, no URL is a clear error, and a relative URL is a TypeError", () => {
  assert.throws(() => new SimpleIO(), { code: "no_url", message: /needs a URL outside a browser/ });
  assert.throws(() => new SimpleIO({ timeout: 1 }), { code: "no_url" });
  assert.throws(() => new SimpleIO("/simpleio"), TypeError);
});

test("a handshake's limits size the POSTs (spec v1.1 §6)", async (t) => {
  const s = scripted([{ epoch: "e", cursor: 0, messages: [], volatile: [], limits: { max_messages: 2 } }]);
  const io = new SimpleIO(URL_, { fetch: s.fetch });
  t.after(() => io.close());
  await until("the handshake", () => s.gets().length == 2);
  const replies = await Promise.all([1, 2, 3, 4, 5].map((n) => io.emit("e", n)));
  assert.deepEqual(replies, [1, 2, 3, 4, 5]);
  const posts = s.requests.filter((r) => r.init.method == "POST");
  const sizes = posts.map((p) => JSON.parse(p.init.body).messages.length);
  assert.ok(sizes.every((n) => n <= 2), `POST sizes ${sizes}`);
});

test("a 429's Retry-After is waited for before the POST is sent again (spec v1.1 §5)", async (t) => {
  const s = scripted([]);
  let refusals = 1;
  const times = [];
  const fetch = (url, init) => {
    if (init.method == "POST") {
      times.push(Date.now());
      if (refusals-- > 0) {
        const body = { error: { code: "too_many_in_progress", message: "later" } };
        return Promise.resolve(Response.json(body, { status: 429, headers: { "retry-after": "1" } }));
      }
    }
    return s.fetch(url, init);
  };
  const io = new SimpleIO(URL_, { fetch, backoffBase: 10 });
  t.after(() => io.close());
  assert.equal(await io.emit("e", "once"), "once");
  assert.equal(times.length, 2);
  assert.ok(times[1] - times[0] >= 950, `sent again after ${times[1] - times[0]} ms`);
});

test("body_unreadable is sent again as it is, not split or failed (spec v1.1 §5)", async (t) => {
  const s = scripted([]);
  let refusals = 1;
  const bodies = [];
  const fetch = (url, init) => {
    if (init.method == "POST") {
      bodies.push(JSON.parse(init.body).messages.length);
      if (refusals-- > 0) {
        const body = { error: { code: "body_unreadable", message: "the upload broke" } };
        return Promise.resolve(Response.json(body, { status: 400 }));
      }
    }
    return s.fetch(url, init);
  };
  const io = new SimpleIO(URL_, { fetch, backoffBase: 10 });
  t.after(() => io.close());
  const replies = await Promise.all([io.emit("e", 1), io.emit("e", 2)]);
  assert.deepEqual(replies, [1, 2]);
  assert.deepEqual(bodies, [2, 2], "the same batch, whole, twice");
});

// Spec §5: `duplicate_id` is never split. This client's ids never repeat, so a batch with none
// shared is failed whole, in one request, rather than split or sent again without end.
test("duplicate_id is never split, and fails a batch that shares no id at once", async (t) => {
  const s = scripted([]);
  let posts = 0;
  const fetch = (url, init) => {
    if (init.method == "POST") {
      posts++;
      const body = { error: { code: "duplicate_id", message: "an id twice" } };
      return Promise.resolve(Response.json(body, { status: 400 }));
    }
    return s.fetch(url, init);
  };
  const io = new SimpleIO(URL_, { fetch, backoffBase: 10 });
  t.after(() => io.close());
  const results = await Promise.allSettled([1, 2, 3].map((n) => io.emit("e", n)));
  assert.ok(results.every((r) => r.status == "rejected" && r.reason.code == "duplicate_id"));
  assert.equal(posts, 1, "one POST, not split");
});

// Spec §8: a message a 200 answers without an ack is kept and asked for again after 250 ms, not
// resent at once.
test("a message without an ack is sent again after 250 ms", async (t) => {
  const s = scripted([]);
  const times = [];
  const fetch = (url, init) => {
    if (init.method == "POST") {
      times.push(Date.now());
      if (times.length == 1) return Promise.resolve(Response.json({ acks: [] }));
    }
    return s.fetch(url, init);
  };
  const io = new SimpleIO(URL_, { fetch, backoffBase: 10 });
  t.after(() => io.close());
  assert.equal(await io.emit("e", "once"), "once");
  assert.equal(times.length, 2);
  assert.ok(times[1] - times[0] >= 240, `sent again after ${times[1] - times[0]} ms`);
});

// Spec §8: 405, 415 and other 4xx but 400/413 fail the batch whole, in one request: splitting
// would meet the same refusal once per message.
test("a 404 or 405 on a POST fails the whole batch in one request", async (t) => {
  for (const status of [404, 405, 415]) {
    const s = scripted([]);
    let posts = 0;
    const fetch = (url, init) => {
      if (init.method == "POST") {
        posts++;
        return Promise.resolve(Response.json({ error: { code: "nope", message: "no" } }, { status }));
      }
      return s.fetch(url, init);
    };
    const io = new SimpleIO(URL_, { fetch, backoffBase: 10 });
    t.after(() => io.close());
    const results = await Promise.allSettled([1, 2, 3, 4].map((n) => io.emit("e", n)));
    assert.ok(results.every((r) => r.status == "rejected" && r.reason.status == status), `${status}`);
    assert.equal(posts, 1, `${status}: one POST`);
  }
});

// Spec §3 step 6: after a take-over, a message sent under the old id is resent under it, alone;
// one not sent yet goes out under the new id, never under the one another instance now polls.
test("after a take-over, new messages go out under the new id, apart from resends", async (t) => {
  const posts = [];
  let answerPoll;
  const gets = [
    Response.json({ epoch: "e", cursor: 0, messages: [], volatile: [] }),
    new Promise((resolve) => (answerPoll = resolve)),
  ];
  const fetch = (url, init) => {
    if (init.method == "POST") {
      const body = JSON.parse(init.body);
      posts.push(body);
      // The first is left pending: it stays at the front, under the first id.
      const acks = body.messages.map((m) =>
        posts.length == 1 ? { id: m.id, pending: true, retry_after_ms: 300 } : { id: m.id, reply: m.data },
      );
      return Promise.resolve(Response.json({ acks }));
    }
    const next = gets.shift();
    if (next) return Promise.resolve(next);
    return new Promise((_, reject) =>
      init.signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError"))),
    );
  };
  const io = new SimpleIO(URL_, { fetch });
  t.after(() => io.close());
  const old = io.id;
  const first = io.emit("e", 1);
  await until("the first POST", () => posts.length == 1);
  answerPoll(Response.json({ epoch: "e", cursor: 0, messages: [], volatile: [], taken_over: true }));
  await until("a new id", () => io.id != old);
  const second = io.emit("e", 2);
  assert.deepEqual(await Promise.all([first, second]), [1, 2]);
  assert.deepEqual(
    posts.map((p) => [p.client, p.messages.map((m) => m.data)]),
    [
      [old, [1]],
      [old, [1]],
      [io.id, [2]],
    ],
  );
});
