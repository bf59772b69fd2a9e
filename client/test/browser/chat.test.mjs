// End to end in a real headless Chromium: two users chat through the server on
// examples/chat.html; the server is stopped and started again mid-chat, and every message
// still shows exactly once on both pages. Leaves a screenshot in tests/artifacts/chat.png.
//
// Needs: SIMPLEIO_URL (the route; its origin serves the page at / and /simpleio/simpleio.js),
// SIMPLEIO_CONTROL (POST /stop, /start; see ../helpers.mjs), and Debian's chromium at
// /usr/bin/chromium (or CHROMIUM). playwright-core drives it and never downloads a browser.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { control, controlUrl, serverUrl, sleep, uniqueUser } from "../helpers.mjs";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const artifacts = resolve(dirname(fileURLToPath(import.meta.url)), "../../../tests/artifacts");

// Fail loudly up front: the Rust harness decides whether to skip, never this file.
serverUrl();
controlUrl();
if (!existsSync(executablePath)) {
  throw new Error(`no Chromium at ${executablePath}: apt-get install -y chromium (or set CHROMIUM)`);
}

test("two users chat through a server restart; nothing is lost or shown twice", async (t) => {
  const browser = await chromium.launch({
    executablePath,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  t.after(() => browser.close());

  const origin = new URL(serverUrl()).origin;
  const errors = [];
  // One browser context per user: separate windows, as two people would have.
  const open = async (user) => {
    const page = await (await browser.newContext({ viewport: { width: 640, height: 480 } })).newPage();
    page.on("pageerror", (err) => errors.push(`${user}: ${err.message}`));
    await page.goto(`${origin}/?user=${user}`);
    return page;
  };
  const ann = uniqueUser("ann");
  const bob = uniqueUser("bob");
  const pages = {};
  const say = async (user, text) => {
    await pages[user].fill("#text", text);
    await pages[user].press("#text", "Enter");
  };
  // What a page shows: [from, text] per message in the log.
  const shown = (user) =>
    pages[user].$$eval("#log li.msg", (lis) => lis.map((li) => [li.dataset.from, li.querySelector("span").textContent]));
  const waitForCount = (user, n, timeout = 20_000) =>
    pages[user].waitForFunction((n) => document.querySelectorAll("#log li.msg").length >= n, n, { timeout });

  const sent = [];
  const chat = async (user, text) => {
    sent.push([user, text]);
    await say(user, text);
  };

  // The server relays a line to the users online when it arrives, so each user first sees
  // their own hello come back: from then on their page is polling and gets every line.
  pages[ann] = await open(ann);
  await say(ann, "ann is here");
  await waitForCount(ann, 1);
  pages[bob] = await open(bob);
  await chat(bob, "bob is here");
  await waitForCount(bob, 1);
  await waitForCount(ann, 2);

  await chat(ann, "hello bob");
  await waitForCount(bob, 2);
  await chat(bob, "hi ann, how are you?");
  await waitForCount(ann, 4);

  // The server goes away mid-chat: both pages notice, and what is typed meanwhile waits.
  await control("stop");
  for (const user of [ann, bob]) {
    await pages[user].waitForFunction(() => !document.getElementById("status").classList.contains("online"), null, { timeout: 10_000 });
  }
  await chat(ann, "sent while the server is down (1)");
  await chat(bob, "sent while the server is down (2)");
  await chat(ann, "sent while the server is down (3)");
  await sleep(1500);
  assert.equal(await pages[ann].$$eval("#outbox li", (l) => l.length), 2, "ann's two messages wait in her outbox");

  await control("start");
  await chat(bob, "and after the restart");
  // ann's page also shows her hello, sent before bob was there.
  const expected = { [ann]: [[ann, "ann is here"], ...sent], [bob]: sent };
  for (const user of [ann, bob]) {
    await waitForCount(user, expected[user].length);
    await pages[user].waitForFunction(() => document.querySelectorAll("#outbox li").length == 0, null, { timeout: 20_000 });
  }
  await sleep(1000); // room for a late duplicate to show up

  for (const user of [ann, bob]) {
    const got = await shown(user);
    const want = expected[user];
    assert.equal(got.length, want.length, `${user} shows every line exactly once: ${JSON.stringify(got)}`);
    assert.deepEqual([...got].sort(), [...want].sort(), `${user} shows exactly what was sent`);
    // Each sender's lines keep their order (across senders, the server's order rules).
    for (const from of [ann, bob]) {
      assert.deepEqual(got.filter(([f]) => f == from), want.filter(([f]) => f == from));
    }
  }
  assert.deepEqual(errors, [], "no uncaught errors on the pages");

  await mkdir(artifacts, { recursive: true });
  await pages[ann].screenshot({ path: join(artifacts, "chat.png") });
});
