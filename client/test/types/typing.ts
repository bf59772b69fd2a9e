// Compile-time tests of the client's typings (dist/simpleio.d.ts, through package.json's
// `exports`): `npm run typecheck` runs `tsc --strict --noEmit` over this file. Each
// `@ts-expect-error` is a negative case: tsc fails if the line below it compiles.
import { connect, SimpleIO, type SimpleIOError } from "simpleio-client";

interface Line {
  from: string;
  text: string;
}
interface ServerEvents {
  chat: (line: Line) => void;
  count: (n: number) => void;
  ping: () => void;
}
interface ClientEvents {
  say: (text: string) => { ok: boolean };
  join: (room: { name: string }) => Promise<string[]>;
  leave: () => void;
  maybe: (flag?: boolean) => number;
}

const io = connect<ServerEvents, ClientEvents>("http://localhost:3000/simpleio");

// --- listeners: typed by the server map ---------------------------------------------------------
io.on("chat", (line) => {
  const from: string = line.from;
  // @ts-expect-error a Line has no `body`
  line.body;
  return from;
});
io.on("count", (n) => n.toFixed());
io.once("ping", () => {});
// @ts-expect-error unknown event: a typo of "chat"
io.on("caht", () => {});
// @ts-expect-error the data of `count` is a number, not a string
io.on("count", (n: string) => n);
// @ts-expect-error the client's own emits are not server events
io.on("say", () => {});

// --- reserved events: typed, on every handle -----------------------------------------------------
io.on("connect", () => {});
io.on("disconnect", (reason) => {
  const why: SimpleIOError = reason;
  const code: string | undefined = reason.code;
  return [why, code];
});
io.once("error", (err) => err.status);
// @ts-expect-error `connect` gets no argument
io.on("connect", (x: string) => x);
// @ts-expect-error a typo of a reserved event
io.on("conect", () => {});

// --- off, onAny --------------------------------------------------------------------------------
const onChat = (line: Line) => line.text;
io.on("chat", onChat).off("chat", onChat).off("chat").off("disconnect");
// @ts-expect-error not an event of the map
io.off("nope");
io.onAny((event, data) => {
  // Narrowed together: `data` follows `event`.
  if (event == "chat") {
    const text: string = data.text;
    return text;
  }
  if (event == "count") return data.toFixed();
  const none: "ping" = event;
  return none;
});
// @ts-expect-error an onAny listener gets the event's name as a known event
io.onAny((event: number) => event);
io.offAny();

// --- emit: data and reply typed by the client map ------------------------------------------------
async function emits() {
  const said: { ok: boolean } = await io.emit("say", "hi");
  const rooms: string[] = await io.emit("join", { name: "lobby" });
  const nothing: void = await io.emit("leave");
  await io.emit("say", "hi", { timeout: 3000 });
  await io.emit("leave", undefined, { timeout: 3000 });
  const n: number = await io.emit("maybe");
  await io.emit("maybe", true);
  // @ts-expect-error unknown event
  await io.emit("sya", "hi");
  // @ts-expect-error `say` takes a string
  await io.emit("say", 42);
  // @ts-expect-error `say` needs its data
  await io.emit("say");
  // @ts-expect-error the reply of `say` is no string
  const wrong: string = await io.emit("say", "hi");
  // @ts-expect-error `timeout` is a number
  await io.emit("say", "hi", { timeout: "3s" });
  // @ts-expect-error no such option
  await io.emit("say", "hi", { retries: 3 });
  return [said, rooms, nothing, n, wrong];
}

// --- namespaces: maps of their own; the client itself stays typed ----------------------------------
interface ChatServer {
  said: (line: Line) => void;
}
interface ChatClient {
  post: (text: string) => number;
}
const chat = io.of<ChatServer, ChatClient>("/chat");
chat.on("said", (line) => line.text).on("disconnect", (reason) => reason.message);
async function chats() {
  const id: number = await chat.emit("post", "hello");
  // @ts-expect-error `/chat` has no `chat` event: that is `/`'s
  chat.on("chat", () => {});
  return id;
}

// --- without maps, anything goes (as plain JavaScript) -----------------------------------------
const loose = connect({ headers: { authorization: "Bearer x" } });
loose.on("anything", (data) => data.whatever);
loose.on("disconnect", (reason) => reason.code);
async function looseEmit() {
  const reply = await loose.emit("whatever", { any: 1 }, { timeout: 10 });
  await loose.emit("bare");
  return reply.anything;
}
const news = loose.of("/news");
news.emit("x", 1);

// --- the class -------------------------------------------------------------------------------------
const typed = new SimpleIO<ServerEvents, ClientEvents>("http://localhost/simpleio", { timeout: 1 });
typed.on("count", (n) => n + 1);
// @ts-expect-error unknown event on the class too
typed.on("counts", () => {});
const id: string = typed.id;
const up: boolean = typed.connected;
// @ts-expect-error the id is read-only
typed.id = "x";
typed.close();

export { emits, chats, looseEmit, id, up };
