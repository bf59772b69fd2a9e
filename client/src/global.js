// Entry of the classic-script bundle (dist/simpleio.min.js, served as {path}/simpleio.js):
// exposes the module's exports as `window.simpleio`. Done by hand rather than with esbuild's
// `globalName`, whose export helpers would cost ~200 bytes gzipped.
import { SimpleIO, connect } from "./simpleio.js";

globalThis.simpleio = { SimpleIO, connect };
