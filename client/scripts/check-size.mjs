// `npm run check`: fails if the committed dist/ is not what a fresh build of src/ produces, or
// if either bundle (the layer serves both) is over its size budget.
// Size = minified + gzip level 9 (node:zlib), the figure a browser actually downloads.
import { build } from "./build.mjs";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

// Bytes, min+gzip, of each bundle, everything included: 2 KiB for protocol v1, 128 more for
// v1.1's Retry-After, handshake limits, POST timeout and body_unreadable rule, then 2,400 for
// once/onAny/offAny, per-emit timeouts, the re-poll after a cut hold and server -> client acks,
// then 2,432 for §8's send rules: a missing ack waits 250 ms, and `duplicate_id`, 405, 415 and
// other refusals fail the batch unsplit.
const BUDGET = 2432;
const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
const fresh = await mkdtemp(join(tmpdir(), "simpleio-build-"));
let ok = true;
try {
  await build(fresh);
  for (const name of (await readdir(fresh)).sort()) {
    const want = await readFile(join(fresh, name));
    const have = await readFile(join(dist, name)).catch(() => null);
    if (!have || !have.equals(want)) {
      console.error(`FAIL dist/${name} is ${have ? "stale" : "missing"}: run \`npm run build\` and commit dist/`);
      ok = false;
    }
  }
  for (const name of ["simpleio.min.js", "simpleio.mjs"]) {
    const code = await readFile(join(fresh, name));
    const gz = gzipSync(code, { level: 9 }).length;
    const over = gz > BUDGET;
    console.log(`${over ? "FAIL" : "ok  "} ${name}: ${code.length} B minified, ${gz} B min+gzip` +
      ` (budget ${BUDGET} B)`);
    if (over) ok = false;
  }
} finally {
  await rm(fresh, { recursive: true, force: true });
}
if (!ok) process.exit(1);
