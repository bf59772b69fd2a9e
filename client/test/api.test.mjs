// The application-facing API beyond on/emit: `once`, `off`, `onAny`/`offAny`, an emit's own
// timeout, and what a held poll cut short by something in between (a 408 or a 504) does.
// Against a scripted `fetch`; needs no server (server.test.mjs runs the same against one).
import { test } from "node:test";
import assert from "node:assert/strict";
import { SimpleIO } from "../src/simpleio.js";
import { scripted, sleep, until } from "./helpers.mjs";

const URL_ = "http://simpleio.test/simpleio";

const msg = (pos, event, data, ns) => ({ pos, event, data, ns });
const poll = (cursor, messages) => ({ epoch: "e", cursor, messages, volatile: [] });

test("once listens to the next message of its event only", async (t) => {
  const got = [];
  const s = scripted([poll(2, [msg(1, "m", "a"), msg(2, "m", "b")]), poll(3, [msg(3, "m", "c")])]);
  const io = new SimpleIO(URL_, { fetch: s.fetch }).once("m", (d) => got.push(d));
  t.after(() => io.close());
  await until("a third poll", () => s.gets().length == 3);
  assert.deepEqual(got, ["a"]);
});

test("once works for reserved events too", async (t) => {
  let connects = 0;
  const s = scripted([poll(0, [])]);
  const io = new SimpleIO(URL_, { fetch: s.fetch }).once("connect", () => connects++);
  t.after(() => io.close());
  await until("connected", () => io.connected);
  assert.equal(connects, 1);
});

test("off removes a once listener by the function given to once", async (t) => {
  const got = [];
  const fn = (d) => got.push(d);
  const s = scripted([poll(1, [msg(1, "m", "a")])]);
  const io = new SimpleIO(URL_, { fetch: s.fetch }).once("m", fn).off("m", fn);
  t.after(() => io.close());
  await until("a second poll", () => s.gets().length == 2);
  assert.deepEqual(got, []);
});

test("off with a function removes that listener only; without one, every listener of the event", async (t) => {
  const a = [];
  const b = [];
  const fa = (d) => a.push(d);
  const s = scripted([poll(1, [msg(1, "m", 1)]), poll(2, [msg(2, "m", 2)])]);
  // The second listener removes every listener of `m` when it gets its first message.
  const io = new SimpleIO(URL_, { fetch: s.fetch })
    .on("m", fa)
    .on("m", (d) => (b.push(d), io.off("m")))
    .off("m", fa);
  t.after(() => io.close());
  await until("a third poll", () => s.gets().length == 3);
  assert.deepEqual([a, b], [[], [1]]);
});

test("onAny gets (event, data) of every message of its namespace, before the event's listeners", async (t) => {
  const seen = [];
  const s = scripted([
    {
      ...poll(2, [msg(1, "a", 1), msg(2, "b", 2, "/chat")]),
      volatile: [{ event: "v", data: 3 }],
    },
  ]);
  const io = new SimpleIO(URL_, { fetch: s.fetch });
  t.after(() => io.close());
  io.onAny((event, data) => seen.push(["any /", event, data]));
  io.on("a", (data) => seen.push(["on a", data]));
  io.of("/chat").onAny((event, data) => seen.push(["any /chat", event, data]));
  // Reserved events are the client's, not messages: onAny does not get them.
  await until("a second poll", () => s.gets().length == 2);
  assert.ok(io.connected);
  assert.deepEqual(seen, [
    ["any /", "a", 1],
    ["on a", 1],
    ["any /chat", "b", 2],
    ["any /", "v", 3],
  ]);
});

test("offAny removes one onAny listener, or all of them", async (t) => {
  const one = [];
  const two = [];
  const f1 = (e) => one.push(e);
  const s = scripted([poll(1, [msg(1, "a")]), poll(2, [msg(2, "b")])]);
  // The second listener removes every onAny listener when it gets its first message.
  const io = new SimpleIO(URL_, { fetch: s.fetch })
    .onAny(f1)
    .onAny((e) => (two.push(e), io.offAny()))
    .offAny(f1);
  t.after(() => io.close());
  await until("a third poll", () => s.gets().length == 3);
  assert.deepEqual([one, two], [[], ["a"]]);
});

// A fetch whose POSTs are held until the test releases them (or the client aborts them), and
// whose GETs are held until aborted: the server has nothing to deliver.
function holdingPosts() {
  const posts = [];
  const fetch = (url, init) =>
    new Promise((resolve, reject) => {
      init.signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
      if (init.method != "POST") return;
      const { messages } = JSON.parse(init.body);
      posts.push({
        messages,
        answer: () => resolve(Response.json({ acks: messages.map((m) => ({ id: m.id, reply: m.data })) })),
      });
    });
  return { fetch, posts };
}

test("an emit not answered within its timeout rejects with code `timeout`, and is still resent with its id", async (t) => {
  const h = holdingPosts();
  // The POST is aborted after 300 ms as a lost response would be, and sent again.
  const io = new SimpleIO(URL_, { fetch: h.fetch, postTimeout: 300, backoffBase: 1, backoffMax: 1 });
  t.after(() => io.close());
  const started = Date.now();
  const sent = io.emit("slow", 1, { timeout: 100 });
  await assert.rejects(sent, { code: "timeout", message: /no answer in time/ });
  const waited = Date.now() - started;
  assert.ok(waited >= 95 && waited < 300, `rejected after ${waited} ms`);
  // It had gone out, so the handler may be running it: the client resends it, same id, until
  // the server answers, so it is handled once at most.
  await until("the second POST", () => h.posts.length == 2);
  assert.deepEqual(h.posts[1].messages, h.posts[0].messages);
  h.posts[1].answer();
  // Answered: no more resends (each would come within the 300 ms POST timeout).
  await sleep(500);
  assert.equal(h.posts.length, 2);
});

test("an emit that times out before it was ever sent is dropped, never sent", async (t) => {
  const h = holdingPosts();
  const io = new SimpleIO(URL_, { fetch: h.fetch });
  t.after(() => io.close());
  const first = io.emit("first", 1);
  await until("the first POST", () => h.posts.length == 1);
  // The one POST in flight holds `first`: `late` waits in the outbox, and times out there.
  const late = io.emit("late", 2, { timeout: 50 });
  await assert.rejects(late, { code: "timeout" });
  h.posts[0].answer();
  assert.equal(await first, 1);
  const next = io.emit("next", 3);
  await until("the second POST", () => h.posts.length == 2);
  h.posts[1].answer();
  assert.equal(await next, 3);
  const events = h.posts.flatMap((p) => p.messages.map((m) => m.event));
  assert.deepEqual(events, ["first", "next"]);
});

test("an emit answered within its timeout resolves with the reply", async (t) => {
  const s = scripted([]);
  const io = new SimpleIO(URL_, { fetch: s.fetch });
  t.after(() => io.close());
  assert.equal(await io.emit("echo", "hi", { timeout: 1000 }), "hi");
});

// A fetch whose GETs are answered as `gets` says, one entry per GET, each { status, after }
// (an error status, after that many ms) or held until aborted when the list is empty.
function cutting(gets) {
  const times = [];
  const fetch = (url, init) =>
    new Promise((resolve, reject) => {
      init.signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
      if (init.method == "POST") return;
      times.push(Date.now());
      const next = gets.shift();
      if (!next) return;
      setTimeout(() => {
        resolve(next.status == 200 ? Response.json(poll(0, [])) : new Response("", { status: next.status }));
      }, next.after);
    });
  return { fetch, times };
}

test("a held poll cut by a 408 or a 504 after a while is sent again at once, with no disconnect", async (t) => {
  const c = cutting([
    { status: 200, after: 0 },
    { status: 408, after: 1100 },
    { status: 504, after: 1100 },
  ]);
  const events = [];
  // A long backoff: any failure would show as a wait of seconds.
  const io = new SimpleIO(URL_, { fetch: c.fetch, backoffBase: 5000, backoffMax: 5000 })
    .on("connect", () => events.push("connect"))
    .on("disconnect", () => events.push("disconnect"))
    .on("error", () => events.push("error"));
  t.after(() => io.close());
  await until("the fourth poll", () => c.times.length == 4, 5000);
  const gaps = c.times.slice(1).map((time, i) => time - c.times[i]);
  assert.ok(gaps[1] < 1400 && gaps[2] < 1400, `gaps between polls: ${gaps}`);
  assert.deepEqual(events, ["connect"]);
  assert.ok(io.connected);
});

test("a 408 or 504 that comes at once is a failure: disconnect and backoff, no tight loop", async (t) => {
  const c = cutting([
    { status: 200, after: 0 },
    { status: 504, after: 0 },
    { status: 408, after: 0 },
  ]);
  const events = [];
  const io = new SimpleIO(URL_, { fetch: c.fetch, backoffBase: 400, backoffMax: 400 })
    .on("disconnect", (err) => events.push(["disconnect", err.status]));
  t.after(() => io.close());
  await until("the fourth poll", () => c.times.length == 4, 5000);
  const gaps = c.times.slice(1).map((time, i) => time - c.times[i]);
  // Backoff of 400 ms × random(0.5, 1): at least 200 ms after each instant answer.
  assert.ok(gaps[1] >= 190 && gaps[2] >= 190, `gaps between polls: ${gaps}`);
  assert.deepEqual(events, [["disconnect", 504]]);
  assert.ok(!io.connected);
});
