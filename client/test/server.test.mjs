// The client against a real simpleio server (SIMPLEIO_URL; see helpers.mjs for the contract).
import { test } from "node:test";
import assert from "node:assert/strict";
import { client, collect, control, once, serverUrl, sleep, uniqueUser, until } from "./helpers.mjs";

// Fail loudly, once, before anything else, rather than with a connection error per test.
serverUrl();

// Each test closes its clients, even when it fails, so the run ends promptly.
function clients(t) {
  const all = [];
  t.after(() => all.forEach((io) => io.close()));
  return (...args) => {
    const io = client(...args);
    all.push(io);
    return io;
  };
}

test("emit resolves with the handler's reply", async (t) => {
  const io = clients(t)(uniqueUser());
  assert.deepEqual(await io.emit("echo", { n: 1, s: "é✓" }), { n: 1, s: "é✓" });
  assert.equal(await io.emit("echo"), null);
});

test("a listener's value, or its promise's, is the reply to a message that asks for one", async (t) => {
  const io = clients(t)(uniqueUser());
  io.on("double", async (n) => {
    await sleep(10);
    return n * 2;
  });
  const answers = collect(io, "answers");
  await io.emit("ask", { event: "double", data: 21 });
  await until("the replies", () => answers.length >= 1);
  assert.deepEqual(answers[0], [42]);
  // No listener, no reply: the server's wait times out.
  await io.emit("ask", { event: "nobody", data: 1 });
  await until("the timeout", () => answers.length >= 2, 5000);
  assert.equal(answers[1], "timeout");
});

test("emit rejects with the handler's error and its code", async (t) => {
  const io = clients(t)(uniqueUser());
  await assert.rejects(io.emit("fail"), (err) => err.code == "handler_error" && !!err.message);
});

test("messages to the user arrive once each, in order, with their data", async (t) => {
  const io = clients(t)(uniqueUser());
  const got = collect(io, "n");
  const sends = [];
  for (let i = 0; i < 30; i++) sends.push(io.emit("send", { event: "n", data: i }));
  await Promise.all(sends);
  await until("30 messages", () => got.length >= 30);
  await sleep(200); // room for a duplicate to show up
  assert.deepEqual(got, [...Array(30).keys()]);
  assert.ok(io.connected);
});

test("every client of a user gets every message", async (t) => {
  const make = clients(t);
  const user = uniqueUser();
  const [a, b] = [make(user), make(user)];
  assert.notEqual(a.id, b.id);
  const [gotA, gotB] = [collect(a, "news"), collect(b, "news")];
  await a.emit("send", { event: "news", data: "one" });
  await b.emit("send", { event: "news", data: "two" });
  await until("both clients get both", () => gotA.length == 2 && gotB.length == 2);
  assert.deepEqual(gotA, ["one", "two"]);
  assert.deepEqual(gotB, ["one", "two"]);
});

test("a message to another user reaches only that user", async (t) => {
  const make = clients(t);
  const [ann, bob] = [uniqueUser("ann"), uniqueUser("bob")];
  const [a, b] = [make(ann), make(bob)];
  const [gotA, gotB] = [collect(a, "dm"), collect(b, "dm")];
  await a.emit("send", { to: bob, event: "dm", data: "hi bob" });
  await until("bob's message", () => gotB.length == 1);
  await sleep(100);
  assert.deepEqual(gotB, ["hi bob"]);
  assert.deepEqual(gotA, []);
});

test("volatile messages reach a waiting client", async (t) => {
  const io = clients(t)(uniqueUser());
  const got = collect(io, "typing");
  // Volatile messages go only to clients waiting at that moment (spec §3), so first make sure
  // the client is in a poll, then keep sending until one lands.
  await io.emit("send", { event: "ready" });
  await until("a first answer", () => io.connected);
  await until("a volatile message", async () => {
    await io.emit("send", { event: "typing", data: { from: "x" }, volatile: true });
    await sleep(50);
    return got.length > 0;
  });
  assert.deepEqual(got[0], { from: "x" });
});

test("a POST whose response was lost is retried and reaches the handler once", async (t) => {
  let dropped = 0;
  // Performs each POST for real, but throws the first response away, as a dropped connection
  // would: the client cannot know the handler ran, so it must resend with the same ids.
  const lossy = async (url, init) => {
    const res = await fetch(url, init);
    if (init.method == "POST" && dropped++ == 0) throw new TypeError("network error (simulated)");
    return res;
  };
  const io = clients(t)(uniqueUser(), { fetch: lossy });
  assert.equal(await io.emit("count", { key: "k" }), 1);
  assert.equal(dropped, 2, "the first response was dropped, the retry went through");
  assert.equal(await io.emit("count", { key: "k" }), 2, "the handler ran once for the first");
});

test("messages emitted while the network is down wait and go out in order afterwards", async (t) => {
  let offline = false;
  const flaky = (url, init) =>
    offline ? Promise.reject(new TypeError("offline (simulated)")) : fetch(url, init);
  const io = clients(t)(uniqueUser(), { fetch: flaky });
  const got = collect(io, "n");
  await io.emit("send", { event: "n", data: 0 });
  await until("connected", () => io.connected);

  // The waiting poll is left alone; every new request fails, as on a dead network.
  offline = true;
  const sends = [1, 2, 3].map((n) => io.emit("send", { event: "n", data: n }));
  await sleep(300); // several failed attempts, with backoff
  const state = await Promise.race([
    Promise.allSettled(sends).then(() => "settled"),
    sleep(10).then(() => "waiting"),
  ]);
  assert.equal(state, "waiting", "nothing is dropped or failed while offline");

  offline = false;
  assert.deepEqual(await Promise.all(sends), [null, null, null]);
  await until("all four", () => got.length == 4);
  assert.deepEqual(got, [0, 1, 2, 3]);
});

test("a 401 is reported as an error and the client resumes once signed in", async (t) => {
  let user = null;
  const io = clients(t)(null, { headers: () => (user ? { "x-user": user } : {}) });
  const err = await once(io, "error");
  assert.equal(err.status, 401);
  const reply = io.emit("echo", "after sign-in");
  user = uniqueUser();
  // Signing in does not shorten the longest backoff by itself; the `online` event would.
  assert.equal(await reply, "after sign-in");
});

test("a message the server refuses (400) fails alone; the rest of the batch is delivered", async (t) => {
  const io = clients(t)(uniqueUser());
  // Emitted in one tick: one POST, which the server refuses as a whole for the empty event
  // name. The client splits the batch until the bad message is alone.
  const results = await Promise.allSettled([
    io.emit("echo", 1),
    io.emit("", "bad"),
    io.emit("echo", 3),
    io.emit("echo", 4),
  ]);
  assert.deepEqual(results.map((r) => r.status), ["fulfilled", "rejected", "fulfilled", "fulfilled"]);
  assert.equal(results[1].reason.status, 400);
  assert.equal(results[1].reason.code, "invalid_field");
  assert.deepEqual([0, 2, 3].map((i) => results[i].value), [1, 3, 4]);
});

test("a message still being handled is reported pending and asked for again", { timeout: 20000 }, async (t) => {
  let posts = 0;
  let pending = 0;
  const watching = async (url, init) => {
    const res = await fetch(url, init);
    if (init.method == "POST") {
      posts++;
      const { acks = [] } = await res.clone().json();
      pending += acks.filter((a) => a.pending).length;
    }
    return res;
  };
  // The first POST gives up (client timeout) while the handler runs on; the retries, same id,
  // are told `pending` (the harness's server waits only 200 ms for the first to finish) until
  // the handler is done, then get its reply. The handler ran once.
  const io = clients(t)(uniqueUser(), { fetch: watching, postTimeout: 700 });
  assert.equal(await io.emit("slow", { ms: 2000 }), "slept");
  assert.ok(pending >= 1, `told pending (${posts} POSTs, ${pending} pending)`);
});

test("close() aborts the waiting poll, rejects pending emits and stops all requests", async (t) => {
  let requests = 0;
  const counting = (url, init) => (requests++, fetch(url, init));
  const io = clients(t)(uniqueUser(), { fetch: counting });
  await io.emit("send", { event: "x" });
  await until("connected", () => io.connected);
  const disconnect = once(io, "disconnect");
  const pending = io.emit("echo", "never answered");
  io.close();
  assert.equal((await disconnect).code, "closed");
  await assert.rejects(pending, (e) => e.code == "closed");
  await assert.rejects(io.emit("echo"), (e) => e.code == "closed");
  const seen = requests;
  await sleep(300);
  assert.equal(requests, seen, "no request after close()");
  assert.equal(io.connected, false);
});

test("across a server restart nothing is lost or delivered twice", { skip: !process.env.SIMPLEIO_CONTROL && "SIMPLEIO_CONTROL is not set" }, async (t) => {
  const make = clients(t);
  const [ann, bob] = [uniqueUser("ann"), uniqueUser("bob")];
  const [a, b] = [make(ann), make(bob)];
  const gotB = collect(b, "dm");
  await a.emit("send", { to: bob, event: "dm", data: 0 });
  await until("the first message", () => gotB.length == 1);

  const down = once(b, "disconnect");
  await control("stop");
  await down;
  // Sent while the server is down: they wait in ann's outbox.
  const sends = [1, 2, 3].map((n) => a.emit("send", { to: bob, event: "dm", data: n }));
  await sleep(300);
  await control("start");
  await Promise.all(sends);
  await until("all messages", () => gotB.length >= 4, 10000);
  await sleep(300);
  assert.deepEqual(gotB, [0, 1, 2, 3]);
});

test("the server serves this client's bundle at {path}/simpleio.js, with an ETag", async () => {
  const url = `${serverUrl()}/simpleio.js`;
  const res = await fetch(url);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /^application\/javascript/);
  const { readFile } = await import("node:fs/promises");
  const bundle = await readFile(new URL("../dist/simpleio.min.js", import.meta.url), "utf8");
  assert.equal(await res.text(), bundle, "the committed dist/simpleio.min.js");
  const etag = res.headers.get("etag");
  assert.match(etag, /^"[0-9a-f]{16}"$/);
  const again = await fetch(url, { headers: { "if-none-match": etag } });
  assert.equal(again.status, 304);
});

test("the server serves the ES module at {path}/simpleio.mjs, and it imports and connects", async (t) => {
  const url = `${serverUrl()}/simpleio.mjs`;
  const res = await fetch(url);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /^application\/javascript/);
  assert.equal(res.headers.get("cache-control"), "no-cache");
  const { readFile } = await import("node:fs/promises");
  const source = await res.text();
  const bundle = await readFile(new URL("../dist/simpleio.mjs", import.meta.url), "utf8");
  assert.equal(source, bundle, "the committed dist/simpleio.mjs");
  // The module as served, imported as is: its client talks to the server that served it.
  const { connect } = await import(`data:text/javascript,${encodeURIComponent(source)}`);
  const io = connect(serverUrl(), { headers: { "x-user": uniqueUser() } });
  t.after(() => io.close());
  assert.equal(await io.emit("echo", "from the served module"), "from the served module");
});

test("once, off and onAny against the server", async (t) => {
  const io = clients(t)(uniqueUser());
  const first = [];
  const any = [];
  const gone = [];
  const dropped = (d) => gone.push(d);
  io.once("n", (d) => first.push(d)).on("n", dropped).off("n", dropped);
  io.onAny((event, data) => any.push([event, data]));
  for (let i = 0; i < 3; i++) await io.emit("send", { event: "n", data: i });
  await io.emit("send", { event: "other", data: "x" });
  await until("4 messages", () => any.length == 4);
  assert.deepEqual(first, [0]);
  assert.deepEqual(gone, []);
  assert.deepEqual(any, [["n", 0], ["n", 1], ["n", 2], ["other", "x"]]);
});

test("an emit whose handler outlasts its timeout rejects with `timeout`; the outbox goes on", async (t) => {
  const io = clients(t)(uniqueUser());
  const started = Date.now();
  await assert.rejects(io.emit("slow", { ms: 1500 }, { timeout: 300 }), { code: "timeout" });
  const waited = Date.now() - started;
  assert.ok(waited < 1400, `rejected after ${waited} ms`);
  // The slow message was sent: it is still being handled, and its answer ends its resends; the
  // next message goes after it, and is answered.
  assert.equal(await io.emit("echo", "next"), "next");
  assert.equal(await io.emit("echo", "fast", { timeout: 5000 }), "fast");
});

for (const status of [504, 408]) {
  test(`a held poll cut by a ${status} in between is sent again at once: no disconnect, messages on time`, async (t) => {
    // Something between client and server answers any request the server holds over 1.2 s
    // with `status` (tests/js_client.rs, `cut_after`), as a proxy or `TimeoutLayer` shorter
    // than the 25 s hold would. A backoff of 5 s would show in every number below.
    const url = `${serverUrl()}?cut=1200&status=${status}`;
    const user = uniqueUser();
    // The cut is real: a held poll of another client of the user gets `status` at 1.2 s.
    const headers = { "x-user": user };
    const probe = `${url}&client=probe-${user}`;
    const { cursor, epoch } = await (await fetch(probe, { headers })).json();
    const held = await fetch(`${probe}&cursor=${cursor}&epoch=${epoch}`, { headers });
    assert.equal(held.status, status);
    const io = clients(t)(user, { backoffBase: 5000, backoffMax: 5000 }, url);
    const events = [];
    io.on("disconnect", (err) => events.push(["disconnect", err.status]));
    io.on("error", (err) => events.push(["error", err.status]));
    await once(io, "connect");
    await sleep(3000); // two cuts
    const got = collect(io, "ping");
    const sent = Date.now();
    await io.emit("send", { event: "ping", data: 1 });
    await until("the ping", () => got.length == 1, 3000);
    const took = Date.now() - sent;
    assert.ok(took < 1000, `the message took ${took} ms`);
    assert.deepEqual(events, []);
    assert.ok(io.connected);
  });
}
