// Issue 5's client features against a real simpleio server (SIMPLEIO_URL; see helpers.mjs for
// the contract): namespaces (spec §4a), bytes (spec §4b), and the `credentials` option.
import { test } from "node:test";
import assert from "node:assert/strict";
import { client, collect, serverUrl, sleep, uniqueUser, until } from "./helpers.mjs";

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

// Every byte value, so a base64 mistake anywhere shows.
const ALL = Uint8Array.from({ length: 256 }, (_, i) => i);

test("of() gives one handle per namespace; its emits reach that namespace's handler", async (t) => {
  const io = clients(t)(uniqueUser());
  const chat = io.of("/chat");
  assert.equal(io.of("/chat"), chat, "the same handle each time");
  assert.equal(io.of("/"), io, "the client itself is `/`");
  assert.notEqual(chat, io);
  assert.equal(await chat.emit("where"), "/chat");
  assert.equal(await io.emit("where"), "/");
  assert.deepEqual(await chat.emit("echo", { text: "hi" }), { text: "hi" });
  // /news has no handler: its messages are refused one by one, the others go on.
  await assert.rejects(io.of("/news").emit("echo", 1), (err) => !!err.code);
  assert.equal(await chat.emit("echo", 2), 2);
});

test("each handle gets its namespace's messages only; unlisted namespaces never arrive", async (t) => {
  const make = clients(t);
  const user = uniqueUser();
  // Two clients of one user: `io` lists / and /chat, `reader` lists / and /news.
  const io = make(user);
  const chat = io.of("/chat");
  const reader = make(user);
  const news = reader.of("/news");
  const got = {
    root: collect(io, "n"),
    chat: collect(chat, "n"),
    readerRoot: collect(reader, "n"),
    news: collect(news, "n"),
  };
  await until("both connected", () => io.connected && reader.connected);
  await io.emit("send", { event: "n", data: "root" });
  await io.emit("send", { ns: "/news", event: "n", data: "news" });
  await io.emit("send", { ns: "/chat", event: "n", data: "chat" });
  // The /chat handler's own `send` emits in /chat.
  await chat.emit("send", { event: "n", data: "from the /chat handler" });
  await io.emit("send", { event: "n", data: "root again" });
  await until("every message", () => got.root.length == 2 && got.chat.length == 2 && got.news.length == 1 && got.readerRoot.length == 2);
  await sleep(200); // room for a stray message to show up
  assert.deepEqual(got.root, ["root", "root again"]);
  assert.deepEqual(got.chat, ["chat", "from the /chat handler"]);
  assert.deepEqual(got.readerRoot, ["root", "root again"]);
  assert.deepEqual(got.news, ["news"]);
});

test("a namespace added after connecting is listed from the next poll on, at once", async (t) => {
  const gets = [];
  const io = clients(t)(uniqueUser(), {
    fetch: (url, init) => {
      if (init.method == "GET") gets.push(new URL(url).searchParams.get("ns"));
      return fetch(url, init);
    },
  });
  await until("connected", () => io.connected);
  await sleep(50); // the client now waits in a held poll listing only `/`
  assert.equal(gets.at(-1), "/");
  const news = io.of("/news");
  const got = collect(news, "n");
  // The held poll was ended: the next one, sent at once, lists /news.
  await until("a poll listing /news", () => gets.at(-1) == "/,/news", 2000);
  await io.emit("send", { ns: "/news", event: "n", data: "late" });
  await until("the /news message", () => got.length == 1);
  assert.deepEqual(got, ["late"]);
});

test("a namespace the user may not use, or that does not exist, is an `error` on every handle", async (t) => {
  const make = clients(t);
  const io = make(uniqueUser());
  const admin = io.of("/admin");
  const [errors, adminErrors] = [collect(io, "error"), collect(admin, "error")];
  await until("the 403", () => errors.length > 0 && adminErrors.length > 0);
  assert.equal(errors[0].status, 403);
  assert.equal(errors[0].code, "forbidden");
  assert.equal(adminErrors[0], errors[0]);
  // The refusal is for the whole poll (spec §4a): nothing else arrives either.
  assert.equal(io.connected, false);
  // In a POST, only the messages to /admin are refused (spec §4a); the batch's others go on.
  const [toAdmin, toRoot] = await Promise.allSettled([admin.emit("echo", 1), io.emit("echo", 2)]);
  assert.equal(toAdmin.reason?.code, "forbidden");
  assert.equal(toRoot.value, 2);

  const other = make(uniqueUser());
  other.of("/nope");
  const otherErrors = collect(other, "error");
  await until("the 400", () => otherErrors.length > 0);
  assert.equal(otherErrors[0].status, 400);
  assert.equal(otherErrors[0].code, "unknown_namespace");
});

test("bytes: a Uint8Array of all 256 values goes out and comes back, in the reply and in a message", async (t) => {
  const io = clients(t)(uniqueUser());
  const got = collect(io, "bytes");
  // `bytes` decodes the content into the server's `Binary`, then sends it back as such.
  const reply = await io.emit("bytes", { name: "all", content: ALL });
  assert.ok(reply.content instanceof Uint8Array, "the reply's bytes are a Uint8Array");
  assert.deepEqual(reply, { name: "all", len: 256, content: ALL });
  await until("the message", () => got.length == 1);
  assert.ok(got[0].content instanceof Uint8Array, "the message's bytes are a Uint8Array");
  assert.deepEqual(got[0], { name: "all", len: 256, content: ALL });
});

test("bytes: ArrayBuffers and every kind of view go as exactly their bytes, anywhere in the data", async (t) => {
  const io = clients(t)(uniqueUser());
  const u16 = new Uint16Array([0x0100, 0x0302, 0xffff]);
  const sent = {
    buffer: ALL.buffer.slice(10, 13),
    view: ALL.subarray(250),
    u16: u16.subarray(1), // the bytes it covers, in the platform's (little-endian) order
    dataView: new DataView(ALL.buffer, 3, 2),
    deep: [[{ empty: new Uint8Array(0) }]],
    // Not bytes: `$bytes` with another key is ordinary JSON (spec §4b).
    lookalike: { $bytes: "AAE=", also: 1 },
  };
  const reply = await io.emit("echo", sent);
  assert.deepEqual(reply, {
    buffer: new Uint8Array([10, 11, 12]),
    view: new Uint8Array([250, 251, 252, 253, 254, 255]),
    u16: new Uint8Array([2, 3, 255, 255]),
    dataView: new Uint8Array([3, 4]),
    deep: [[{ empty: new Uint8Array(0) }]],
    lookalike: { $bytes: "AAE=", also: 1 },
  });
  // Bytes inside a namespace's messages too.
  const chat = io.of("/chat");
  const got = collect(chat, "blob");
  await chat.emit("send", { event: "blob", data: [ALL] });
  await until("the /chat message", () => got.length == 1);
  assert.deepEqual(got[0], [ALL]);
});

test("the `credentials` option is passed to every fetch", async (t) => {
  const seen = [];
  const io = clients(t)(uniqueUser(), {
    credentials: "include",
    fetch: (url, init) => {
      seen.push(init.credentials);
      return fetch(url, init);
    },
  });
  assert.equal(await io.emit("echo", "with cookies"), "with cookies");
  await until("connected", () => io.connected);
  assert.ok(seen.length >= 2);
  assert.deepEqual(new Set(seen), new Set(["include"]));
});
