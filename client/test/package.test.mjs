// The npm package as it would be published: `npm pack --dry-run` lists what goes in, and what
// package.json promises (entry points, types, the global build) must be in it. Needs no server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));

// `npm pack --dry-run --json`: the tarball's name and files, without writing it.
const packed = () => {
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], {
    cwd: root,
    encoding: "utf8",
  });
  const [info] = JSON.parse(out);
  return { ...info, paths: info.files.map((f) => f.path).sort() };
};

test("package.json is publishable: named, versioned, licensed, not private", () => {
  assert.equal(pkg.name, "simpleio-client");
  assert.match(pkg.version, /^\d+\.\d+\.\d+$/);
  assert.equal(pkg.license, "MIT OR Apache-2.0");
  assert.equal(pkg.private, undefined);
  assert.equal(pkg.type, "module");
  assert.deepEqual(Object.keys(pkg.dependencies || {}), [], "the client has no dependencies");
});

test("npm pack ships the bundles, the types, the readable source and the README, nothing else", () => {
  const { name, version, paths } = packed();
  assert.equal(name, pkg.name);
  assert.equal(version, pkg.version);
  assert.deepEqual(paths, [
    "README.md",
    "dist/simpleio.d.ts",
    "dist/simpleio.min.js",
    "dist/simpleio.mjs",
    "package.json",
    "src/global.js",
    "src/simpleio.js",
  ]);
});

test("every file package.json points to is in the package", () => {
  const { paths } = packed();
  const targets = [
    pkg.main,
    pkg.module,
    pkg.types,
    pkg.unpkg,
    pkg.exports["."].types,
    pkg.exports["."].import,
    pkg.exports["."].default,
    pkg.exports["./global"],
  ];
  for (const target of targets) {
    assert.ok(paths.includes(target.replace(/^\.\//, "")), `${target} is not packed`);
  }
});

test("the package's own name resolves through `exports` to the ES module and the global build", async () => {
  assert.equal(fileURLToPath(import.meta.resolve("simpleio-client")), join(root, "dist/simpleio.mjs"));
  assert.equal(
    fileURLToPath(import.meta.resolve("simpleio-client/global")),
    join(root, "dist/simpleio.min.js"),
  );
  const { connect, SimpleIO } = await import("simpleio-client");
  assert.equal(typeof connect, "function");
  assert.equal(typeof SimpleIO, "function");
});

test("the global build defines window.simpleio with the module's exports", async () => {
  const code = readFileSync(join(root, "dist/simpleio.min.js"), "utf8");
  const scope = {};
  new Function("globalThis", code)(scope);
  assert.deepEqual(Object.keys(scope.simpleio).sort(), ["SimpleIO", "connect"]);
});
