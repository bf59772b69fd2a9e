// Cross-origin in a real headless Chromium: a page on one origin (SIMPLEIO_PAGE, a blank page)
// uses the route on another (SIMPLEIO_URL: another port of 127.0.0.1, so another origin), whose
// server wraps the layer in tower_http's CorsLayer with credentials allowed for the page's
// origin. Identity is a `user` cookie of the API's host: a cross-origin fetch sends it only with
// `credentials: "include"`, which is what this proves, along with messages, a namespace and
// bytes flowing both ways.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";
import { serverUrl, uniqueUser } from "../helpers.mjs";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

serverUrl();
const pageOrigin = process.env.SIMPLEIO_PAGE;
if (!pageOrigin) throw new Error("SIMPLEIO_PAGE is not set (cargo test --test js_client sets it)");
if (!existsSync(executablePath)) {
  throw new Error(`no Chromium at ${executablePath}: apt-get install -y chromium (or set CHROMIUM)`);
}

test("a page on another origin talks to the route with cookie identity, through CORS", async (t) => {
  const browser = await chromium.launch({
    executablePath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  });
  t.after(() => browser.close());
  const route = serverUrl();
  const api = new URL(route).origin;
  assert.notEqual(api, pageOrigin, "two origins");

  const context = await browser.newContext();
  const user = uniqueUser("cors");
  await context.addCookies([{ name: "user", value: user, url: api }]);
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(err.message));
  await page.goto(`${pageOrigin}/`);
  // The bundle comes from the API's origin, as a page elsewhere would load it.
  await page.addScriptTag({ url: `${api}/simpleio/simpleio.js` });

  const result = await page.evaluate(async (route) => {
    const until = async (check) => {
      for (let i = 0; i < 500 && !check(); i++) await new Promise((r) => setTimeout(r, 20));
    };
    // A CORS failure is a network error to the client, which retries for ever: give up sooner.
    const soon = (promise, what) =>
      Promise.race([promise, new Promise((_, no) => setTimeout(() => no(new Error(`no answer to ${what}`)), 10e3))]);
    const io = simpleio.connect(route, { credentials: "include" });
    const chat = io.of("/chat");
    const said = [];
    const blobs = [];
    chat.on("said", (data) => said.push(data));
    io.on("bytes", (data) => blobs.push(data));
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    const same = (a) => a instanceof Uint8Array && a.length == 256 && a.every((b, i) => b == i);

    const whoami = await soon(io.emit("whoami"), "whoami");
    const where = await soon(chat.emit("where"), "where");
    const reply = await soon(io.emit("bytes", { name: "all", content: all }), "bytes");
    await soon(chat.emit("send", { event: "said", data: "hello from another origin" }), "send");
    await until(() => said.length && blobs.length && io.connected);

    // Without the option, a cross-origin fetch leaves the cookie out: the server says 401.
    const bare = simpleio.connect(route);
    const refused = [];
    bare.on("error", (err) => refused.push(err.status));
    await until(() => refused.length);
    bare.close();
    io.close();
    return {
      pageOrigin: location.origin,
      whoami,
      where,
      replyBytes: same(reply.content),
      messageBytes: same(blobs[0]?.content),
      said,
      connected: io.connected,
      refused,
    };
  }, route);

  assert.equal(result.pageOrigin, pageOrigin);
  assert.equal(result.whoami, user, "the cookie identified the user");
  assert.equal(result.where, "/chat");
  assert.ok(result.replyBytes, "the reply's bytes are all 256 values, as a Uint8Array");
  assert.ok(result.messageBytes, "the message's bytes too");
  assert.deepEqual(result.said, ["hello from another origin"]);
  assert.equal(result.refused[0], 401, "without credentials: \"include\" the cookie is not sent");
  assert.deepEqual(errors, [], "no uncaught errors on the page");
});
