// A duplicated tab in a real headless Chromium: the copy (opened from the page, so it gets a
// copy of its sessionStorage, as "Duplicate tab" does) runs its own client with its own id, so
// the two never end each other's polls (spec §2, §3 `taken_over`): each polls at its own pace,
// and both get the chat.
//
// Needs: SIMPLEIO_URL (its origin serves examples/chat.html at /), and Debian's chromium at
// /usr/bin/chromium (or CHROMIUM).
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";
import { serverUrl, sleep, uniqueUser } from "../helpers.mjs";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
serverUrl();
if (!existsSync(executablePath)) {
  throw new Error(`no Chromium at ${executablePath}: apt-get install -y chromium (or set CHROMIUM)`);
}

test("a duplicated tab takes a client id of its own; neither ends the other's polls", async (t) => {
  const browser = await chromium.launch({
    executablePath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
  });
  t.after(() => browser.close());
  const context = await browser.newContext();
  const origin = new URL(serverUrl()).origin;
  const user = uniqueUser("ann");

  // Every GET of the route, per page, by its `client` parameter. Recorded on the context, not
  // on each page, so that a copy's first poll (sent before `window.open` returns here) is seen.
  const byPage = new Map();
  context.on("request", (req) => {
    const url = new URL(req.url());
    if (req.method() == "GET" && url.pathname == "/simpleio") {
      const page = req.frame().page();
      if (!byPage.has(page)) byPage.set(page, []);
      byPage.get(page).push(url.searchParams.get("client"));
    }
  });
  const polls = new Map();
  const watch = (page, name) => {
    if (!byPage.has(page)) byPage.set(page, []);
    polls.set(name, byPage.get(page));
  };
  const first = await context.newPage();
  watch(first, "first");
  await first.goto(`${origin}/?user=${user}`);
  await first.evaluate(() => sessionStorage.setItem("copied", "yes"));
  await first.waitForFunction(() => document.getElementById("status").className == "online");

  const [copy] = await Promise.all([
    context.waitForEvent("page"),
    first.evaluate(() => window.open(location.href)),
  ]);
  watch(copy, "copy");
  await copy.waitForLoadState();
  assert.equal(await copy.evaluate(() => sessionStorage.getItem("copied")), "yes", "not a copy");
  await copy.waitForFunction(() => document.getElementById("status").className == "online");

  // Three seconds of two tabs: a ping-pong of polls would be hundreds of GETs. (A few more than
  // one per hold are fine: the server these tests share may be restarted meanwhile by another
  // test, and the clients then reconnect with backoff.)
  const before = { first: polls.get("first").length, copy: polls.get("copy").length };
  await sleep(3000);
  const during = {
    first: polls.get("first").length - before.first,
    copy: polls.get("copy").length - before.copy,
  };
  assert.ok(during.first <= 30 && during.copy <= 30, `GETs in 3 s: ${JSON.stringify(during)}`);
  const ids = (name) => new Set(polls.get(name));
  assert.equal(ids("first").size, 1, "the first tab changed its id");
  assert.equal(ids("copy").size, 1, "the copy changed its id");
  assert.notDeepEqual([...ids("first")], [...ids("copy")], "the copy shares the first tab's id");

  // Both tabs get what either says.
  await copy.fill("#text", "from the copy");
  await copy.press("#text", "Enter");
  for (const page of [first, copy]) {
    await page.waitForFunction(
      () => [...document.querySelectorAll("#log li span")].some((s) => s.textContent == "from the copy"),
      null,
      { timeout: 10_000 },
    );
  }
});
