// Builds the bundles in dist/ (or in the directory given as the first argument):
//   simpleio.mjs     ES module, minified            import { connect } from "./simpleio.mjs"
//   simpleio.min.js  classic script, minified      <script src="/simpleio/simpleio.js"> -> window.simpleio
//   simpleio.d.ts    the hand-written declarations, copied as they are
// check-size.mjs calls build() into a temp dir to prove the committed dist/ is a fresh build.
//
// esbuild bundles and minifies; terser then compresses esbuild's output once more. The second
// pass is worth about 80 B min+gzip (3.5%) on this client, which counts against a budget of a
// few kilobytes; both are deterministic, so a fresh build is byte for byte the committed one.
import { build as esbuild } from "esbuild";
import { minify } from "terser";
import { copyFile, mkdir, readFile, writeFile } from "node:fs/promises";
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
    write: false,
  };
  const bundles = [
    ["src/simpleio.js", "esm", "simpleio.mjs"],
    ["src/global.js", "iife", "simpleio.min.js"],
  ];
  for (const [entry, format, name] of bundles) {
    const { outputFiles } = await esbuild({ ...common, entryPoints: [join(root, entry)], format });
    const { code } = await minify(outputFiles[0].text, {
      ecma: 2022,
      module: format == "esm",
      // Only the banner (`/*!`) survives.
      format: { comments: /^!/ },
    });
    await writeFile(join(outdir, name), code + "\n");
  }
  await copyFile(join(root, "src/simpleio.d.ts"), join(outdir, "simpleio.d.ts"));
  return outdir;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const out = await build(process.argv[2] && resolve(process.argv[2]));
  console.log(`built ${out}`);
}
