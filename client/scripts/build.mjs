// Builds the bundles in dist/ (or in the directory given as the first argument):
//   simpleio.mjs     ES module, minified            import { connect } from "./simpleio.mjs"
//   simpleio.min.js  classic script, minified      <script src="/simpleio/simpleio.js"> -> window.simpleio
//   simpleio.d.ts    the hand-written declarations, copied as they are
// check-size.mjs calls build() into a temp dir to prove the committed dist/ is a fresh build.
import { build as esbuild } from "esbuild";
import { copyFile, mkdir, readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { dirname, join, resolve } from "node:path";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");

export async function build(outdir = join(root, "dist")) {
  const { version, license } = JSON.parse(await readFile(join(root, "package.json"), "utf8"));
  await mkdir(outdir, { recursive: true });
  const common = {
    bundle: true,
    minify: true,
    // Private class fields, `??=` and optional chaining stay native (no WeakMap helpers):
    // every browser with fetch + AbortController + private methods (2021+) runs it as is.
    target: "es2022",
    banner: { js: `/*! simpleio client ${version} | ${license} */` },
    legalComments: "none",
    logLevel: "warning",
  };
  await esbuild({
    ...common,
    entryPoints: [join(root, "src/simpleio.js")],
    format: "esm",
    outfile: join(outdir, "simpleio.mjs"),
  });
  await esbuild({
    ...common,
    entryPoints: [join(root, "src/global.js")],
    format: "iife",
    outfile: join(outdir, "simpleio.min.js"),
  });
  await copyFile(join(root, "src/simpleio.d.ts"), join(outdir, "simpleio.d.ts"));
  return outdir;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const out = await build(process.argv[2] && resolve(process.argv[2]));
  console.log(`built ${out}`);
}
