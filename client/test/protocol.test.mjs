// The client's protocol rules (spec §3–§5) against a scripted `fetch`, for the cases a real
// server does not produce on demand: an epoch change, a repeated message, a wake-up.
// Needs no server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { SimpleIO } from "../src/simpleio.js";
import { sleep, until } from "./helpers.mjs";

const URL_ = "http://simpleio.test/simpleio";

// A fake fetch: records each request; GETs are answered from `polls` in order, then held until
// aborted, as a long poll with nothing to deliver would be.
function scripted(polls) {
  const requests = [];
  const fetch = (url, init) => {
    const req = { url: new URL(url), init };
    requests.push(req);
    if (init.method == "POST") {
      const { messages } = JSON.parse(init.body);
      const acks = messages.map((m) => ({ id: m.id, reply: m.data }));
      return Promise.resolve(Response.json({ acks }));
    }
    const next = polls.shift();
    if (next) return Promise.resolve(Response.json(next));
    return new Promise((_, reject) =>
      init.signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError"))),
    );
  };
  return { fetch, requests, gets: () => requests.filter((r) => r.init.method == "GET") };
}

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

test("a new epoch resets the cursor: positions start again and are delivered", async (t) => {
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
  const doc = Object.assign(new EventTarget(), { visibilityState: "hidden" });
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
  doc.visibilityState = "visible";
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

test("a relative or default URL needs a page; in Node the URL must be absolute", () => {
  assert.throws(() => new SimpleIO(), TypeError);
});
