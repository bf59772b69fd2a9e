// The ES module as the layer serves it (`{path}/simpleio.mjs`), imported by a page in a real
// headless Chromium: the browser accepts its content type for a module, and the client it
// exports connects, emits and receives.
//
// Needs: SIMPLEIO_URL (its origin serves examples/chat.html at /), and Debian's chromium at
// /usr/bin/chromium (or CHROMIUM).
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";
import { serverUrl, uniqueUser } from "../helpers.mjs";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
serverUrl();
if (!existsSync(executablePath)) {
  throw new Error(`no Chromium at ${executablePath}: apt-get install -y chromium (or set CHROMIUM)`);
}

test("a page imports {path}/simpleio.mjs and its client talks to the server", async (t) => {
  const browser = await chromium.launch({
    executablePath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
  });
  t.after(() => browser.close());
  const page = await browser.newPage();
  const origin = new URL(serverUrl()).origin;
  const user = uniqueUser("mod");
  await page.goto(`${origin}/?user=${user}`);
  const result = await page.evaluate(async (user) => {
    const { connect, SimpleIO } = await import("/simpleio/simpleio.mjs");
    const io = connect({ headers: { "x-user": user } });
    const got = new Promise((resolve) => io.once("hello", resolve));
    const reply = await io.emit("echo", "from a module", { timeout: 5000 });
    await io.emit("send", { event: "hello", data: { n: 1 } });
    const hello = await got;
    const result = { reply, hello, isClient: io instanceof SimpleIO, connected: io.connected };
    io.close();
    return result;
  }, user);
  assert.deepEqual(result, {
    reply: "from a module",
    hello: { n: 1 },
    isClient: true,
    connected: true,
  });
});
