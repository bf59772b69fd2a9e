// The JavaScript client (../src/simpleio.js) as a client conformance adapter, under Node 20+
// (docs/client-conformance.md): commands as JSON lines on stdin, the client's events as JSON
// lines on stdout. tests/client_conformance.rs starts it with:
//
//   SIMPLEIO_URL             the route's URL
//   SIMPLEIO_USER            sent as the `x-user` header on every request
//   SIMPLEIO_EVENTS          the message events to listen to, comma-separated (default "msg")
//   SIMPLEIO_BACKOFF_BASE_MS, SIMPLEIO_BACKOFF_MAX_MS   the client's backoff, if given
//
// By hand: `SIMPLEIO_URL=http://127.0.0.1:3000/simpleio SIMPLEIO_USER=ann node
// client/test/conformance-driver.mjs`, then type {"cmd":"emit","tag":"1","event":"chat","data":1}.

import { createInterface } from "node:readline";
import { SimpleIO } from "../src/simpleio.js";

const env = process.env;
const write = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);
const number = (name) => (env[name] ? Number(env[name]) : undefined);
const backoffBase = number("SIMPLEIO_BACKOFF_BASE_MS");
const backoffMax = number("SIMPLEIO_BACKOFF_MAX_MS");

if (!env.SIMPLEIO_URL || !env.SIMPLEIO_USER) {
  console.error("conformance-driver: SIMPLEIO_URL and SIMPLEIO_USER must be set");
  process.exit(2);
}

const io = new SimpleIO(env.SIMPLEIO_URL, {
  headers: { "x-user": env.SIMPLEIO_USER },
  ...(backoffBase != null && { backoffBase }),
  ...(backoffMax != null && { backoffMax }),
});
write({ type: "client_id", id: io.id });

// The client's events carry an Error with `status` and `code` when a request was refused.
const failure = (err) => ({ status: err?.status ?? null, code: err?.code ?? null });
io.on("connect", () => write({ type: "connected" }));
io.on("disconnect", (err) => {
  write({ type: "disconnected", reason: String(err?.message ?? err) });
  if (err?.status) write({ type: "error", ...failure(err) });
});
io.on("error", (err) => write({ type: "error", ...failure(err) }));
for (const event of (env.SIMPLEIO_EVENTS || "msg").split(",")) {
  // The listener gets the data only: the client does not expose a message's position.
  io.on(event, (data) => write({ type: "message", ns: "/", event, data, pos: null }));
}

let closing = false;
const close = () => {
  if (closing) return;
  closing = true;
  io.close();
  // After the rejections of the emits still waiting (`closed`) are written.
  setImmediate(() => {
    write({ type: "closed" });
    process.exit(0);
  });
};

// Lines read from one chunk of stdin are handled in one go, so emits sent together share a POST.
const input = createInterface({ input: process.stdin });
input.on("line", (line) => {
  if (!line.trim() || closing) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    write({ type: "bad_command", line, reason: err.message });
    return;
  }
  if (cmd.cmd == "emit") {
    const handle = cmd.ns && cmd.ns != "/" ? io.of(cmd.ns) : io;
    handle.emit(cmd.event, cmd.data ?? null).then(
      (reply) => write({ type: "ack", tag: cmd.tag, reply: reply ?? null }),
      (err) => write({ type: "ack_error", tag: cmd.tag, code: err.code ?? null, message: err.message }),
    );
  } else if (cmd.cmd == "close") {
    close();
  } else {
    write({ type: "bad_command", line, reason: "unknown cmd" });
  }
});
input.on("close", close);
