// Shared helpers of the client's tests.
//
// The server-backed tests talk to a real simpleio server whose route URL is in SIMPLEIO_URL
// (tests/js_client.rs starts one and sets it). Its application follows a small contract the
// tests rely on — identity from the `x-user` header, else a `user` cookie (demo only), and
// these events, in `/` and, with the same handler, in the namespace `/chat`:
//   echo  data        -> reply: data
//   fail  -           -> handler error, code "handler_error"
//   count {key}       -> reply: how many times `count` ran for (user, key), so a test can prove
//                        a retried POST reached the handler once
//   send  {to?, ns?, event, data, volatile?} -> the server emits `event` with `data` to user
//                        `to` (default: the sender) in namespace `ns` (default: the message's),
//                        volatile if asked; reply: null
//   where -           -> reply: the namespace whose handler got the message
//   whoami -          -> reply: the sender's user id
//   bytes {name, content: bytes} -> decoded into the server's `Binary`; reply and a message
//                        `bytes` to the sender: {name, len, content: the same bytes}
//   join  -           -> joins the chat (reply: anything)
//   chat  {text}      -> emits `chat` {from, text, at} to every user who joined
// Other namespaces: `/news` (no handler: its messages are refused one by one) and `/admin`
// (its authorization refuses everyone: 403 `forbidden`).
// A route URL with `?cut=<ms>&status=<code>` (kept by the client in every request) is answered
// `status`, empty, by a stand-in proxy when the server holds it over `ms`.
// SIMPLEIO_PAGE is another origin's blank page, whose origin the route's CORS allows with
// credentials. SIMPLEIO_CONTROL, when set, is a control URL: POST /stop stops the HTTP server
// (dropping every connection; storage is kept), POST /start binds it again on the same port.
import { SimpleIO } from "../src/simpleio.js";

export function serverUrl() {
  const url = process.env.SIMPLEIO_URL;
  if (!url) {
    throw new Error(
      "SIMPLEIO_URL is not set: these tests need a running simpleio server " +
        "(run them through `cargo test --test js_client`, which starts one)",
    );
  }
  return url;
}

export function controlUrl() {
  const url = process.env.SIMPLEIO_CONTROL;
  if (!url) throw new Error("SIMPLEIO_CONTROL is not set (cargo test --test js_client sets it)");
  return url;
}

export const control = async (what) => {
  const res = await fetch(`${controlUrl()}/${what}`, { method: "POST" });
  if (!res.ok) throw new Error(`control ${what}: HTTP ${res.status}`);
};

// A user name no other test uses, so tests sharing the server do not see each other's messages.
export const uniqueUser = (name = "u") => `${name}-${Math.random().toString(36).slice(2, 10)}`;

// A client of `user` with a short backoff, so failure tests run fast.
export function client(user, options = {}, url = serverUrl()) {
  return new SimpleIO(url, {
    headers: { "x-user": user },
    backoffBase: 20,
    backoffMax: 200,
    ...options,
  });
}

// Collects the data of every `event` a client receives.
export function collect(io, event) {
  const got = [];
  io.on(event, (data) => got.push(data));
  return got;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls `check` until it returns something truthy or `ms` pass; the failure names what was awaited.
export async function until(what, check, ms = 5000) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

export const once = (io, event) => new Promise((resolve) => {
  const fn = (arg) => { io.off(event, fn); resolve(arg); };
  io.on(event, fn);
});

// A fake fetch: records each request; GETs are answered from `polls` in order, then held until
// aborted, as a long poll with nothing to deliver would be.
export function scripted(polls) {
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
