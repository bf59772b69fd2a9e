// The admin page (feature `admin`) in a real headless Chromium: refused without the operator's
// key; with it, it shows the live users, rooms, pending messages and charts, updating live.
// Leaves a screenshot in tests/artifacts/admin.png and checks it.
//
// Needs: SIMPLEIO_ADMIN (the page's URL), SIMPLEIO_ADMIN_KEY (the x-admin-key header the
// application's authorization wants), and Debian's chromium at /usr/bin/chromium (or CHROMIUM).
// Driven by tests/admin.rs, which runs the server and its traffic.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const artifacts = resolve(dirname(fileURLToPath(import.meta.url)), "../../../tests/artifacts");
const adminUrl = process.env.SIMPLEIO_ADMIN;
const adminKey = process.env.SIMPLEIO_ADMIN_KEY;

// Fail loudly up front: the Rust harness decides whether to skip, never this file.
if (!adminUrl || !adminKey) throw new Error("set SIMPLEIO_ADMIN and SIMPLEIO_ADMIN_KEY");
if (!existsSync(executablePath)) {
  throw new Error(`no Chromium at ${executablePath}: apt-get install -y chromium (or set CHROMIUM)`);
}

const WIDTH = 1280;
const HEIGHT = 900;

/// The width and height a PNG's header says it has.
function pngSize(png) {
  assert.deepEqual([...png.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10], "a PNG");
  return [png.readUInt32BE(16), png.readUInt32BE(20)];
}

test("the admin page is refused without the key and shows live figures with it", async (t) => {
  const browser = await chromium.launch({
    executablePath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  });
  t.after(() => browser.close());

  const stranger = await (await browser.newContext()).newPage();
  const refused = await stranger.goto(adminUrl);
  assert.equal(refused.status(), 403, "no key, no page");
  assert.ok(!(await stranger.content()).includes("Live users"), "a refusal shows nothing of the page");

  const context = await browser.newContext({
    viewport: { width: WIDTH, height: HEIGHT },
    extraHTTPHeaders: { "x-admin-key": adminKey },
  });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(err.message));
  const answered = await page.goto(`${adminUrl}?every=200`);
  assert.equal(answered.status(), 200);
  // Until messages are delivered, then several updates more, so the charts have rates to draw
  // (on a busy machine the first updates may come before any traffic).
  const updates = () => Number(document.body.dataset.updates || 0);
  await page.waitForFunction(
    () => Number(document.querySelector('[data-name="delivered"] b')?.textContent) > 0
      && document.querySelector("#users")?.textContent.includes("ann"),
    null, { timeout: 20000 });
  const seen = await page.evaluate(updates);
  await page.waitForFunction((n) => Number(document.body.dataset.updates || 0) >= n + 10, seen, { timeout: 30000 });

  const users = await page.textContent("#users");
  assert.match(users, /ann/);
  assert.match(users, /tab1/);
  assert.match(await page.textContent("#rooms"), /lobby/);
  assert.match(await page.textContent("#pending"), /nobody/, "the message nobody confirms waits");
  const delivered = await page.textContent('[data-name="delivered"] b');
  assert.ok(Number(delivered) > 0, `delivered: ${delivered}`);
  assert.match(await page.textContent("#status"), /updated/);

  // Each chart drew its series in colour (lines may overlap: count any colour), not just the
  // grey grid, and the rates chart's lines leave its floor: some rate is above zero. How many
  // pixels a line takes depends on how the rates varied (a busy machine draws flatter lines),
  // so the bounds only say "a line is there": the grid alone has no coloured pixel at all.
  const drawn = await page.evaluate(() => ["rates", "latency"].map((id) => {
    const c = document.getElementById(id);
    const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let coloured = 0, raised = 0;
    for (let i = 0; i < data.length; i += 4) {
      const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
      if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 60) {
        coloured++;
        if ((i / 4) / c.width < c.height - 20) raised++;
      }
    }
    return { coloured, raised };
  }));
  assert.ok(drawn[0].coloured > 60 && drawn[0].raised > 20, `the rates chart: ${JSON.stringify(drawn[0])}`);
  assert.ok(drawn[1].coloured > 60, `the latency chart: ${JSON.stringify(drawn[1])}`);

  await mkdir(artifacts, { recursive: true });
  const png = await page.screenshot({ fullPage: false });
  await writeFile(join(artifacts, "admin.png"), png);
  assert.deepEqual(pngSize(png), [WIDTH, HEIGHT]);
  assert.ok(png.length > 20000, `a screenshot with something on it: ${png.length} bytes`);
  assert.deepEqual(errors, [], "no script errors on the page");
});
