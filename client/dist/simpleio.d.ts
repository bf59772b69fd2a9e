// Type declarations for the simpleio browser client (hand-written; copied to dist/ by the build).
// The protocol it speaks is docs/spec.md, version 1.1, with namespaces (§4a) and bytes (§4b).

/** Options of {@link connect} / {@link SimpleIO}. Every field is optional. */
export interface Options {
  /** Extra request headers (e.g. `Authorization`), or a function returning them before each
   * request, so a token can be refreshed. */
  headers?: Record<string, string> | (() => Record<string, string> | Promise<Record<string, string>>);
  /** `fetch`'s credentials mode. `"include"` sends cookies to a route on another origin (the
   * server must answer CORS with `Access-Control-Allow-Credentials: true` and that exact page
   * origin, e.g. tower-http's `CorsLayer` with `allow_credentials(true)`). Default: fetch's own,
   * `"same-origin"`. */
  credentials?: RequestCredentials;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** `GET` timeout in ms, a little above the server's hold time. Default 35000. */
  timeout?: number;
  /** `POST` timeout in ms: the server may hold one for its pending wait plus the handler's
   * time. Default 30000 (spec §4). */
  postTimeout?: number;
  /** Backoff after a failure: min(backoffMax, backoffBase × 2^attempts) × random(0.5, 1).
   * Defaults 500 and 30000 ms. */
  backoffBase?: number;
  backoffMax?: number;
  /** How long in ms a message sent but not answered is resent (default 540000, inside the
   * server's 10-minute dedup window); past it, it rejects with code `expired`. */
  dedupWindow?: number;
}

/** An error from the server or the client. `code` is stable and meant for programs. */
export interface SimpleIOError extends Error {
  /** The protocol's error code (`handler_error`, `invalid_field`, …), or one of the client's:
   * `closed` (the client was closed), `expired` (no answer within the dedup window), `timeout`
   * (no answer within an emit's own `timeout`), `no_url` (no URL outside a browser). Undefined
   * for network errors and request timeouts. */
  code?: string;
  /** The HTTP status, when the error came with a response. */
  status?: number;
  /** The response's `Retry-After`, in seconds, if it had one (`429`, `503`). */
  after?: string | null;
}

/**
 * Bytes, as you may send them anywhere in `emit` data: they travel as `{"$bytes": "<base64>"}`
 * (spec §4b), covering exactly the view's bytes. Bytes you receive, anywhere in a message's data
 * or a reply, are always a `Uint8Array`. (A Node `Buffer` serializes itself first: pass
 * `new Uint8Array(buffer)`.)
 */
export type Bytes = ArrayBuffer | ArrayBufferView;

/** The reserved events, raised by the client itself on every handle (the client and each
 * namespace handle alike), since all share one connection. A map of yours cannot redefine them. */
export interface ReservedEvents {
  /** A poll got an answer after none had (at start, or after a disconnect). */
  connect: () => void;
  /** A poll failed after the connection had been up, or the client was closed. A held poll
   * cut short by a `408` or `504` from something in between (a proxy, a `TimeoutLayer`) a
   * second or more after it went out is no failure: the client polls again at once. */
  disconnect: (reason: SimpleIOError) => void;
  /** The server refused a poll (4xx, e.g. 401/403 while signed out, 403 from a namespace's
   * authorization, 400 `unknown_namespace`), or a send with 401/403. A refused namespace refuses
   * the whole poll, so nothing arrives until it is allowed. The client keeps retrying at the
   * longest backoff. */
  error: (error: SimpleIOError) => void;
}

/**
 * A map of events to the type of their function, e.g.
 * `{ chat: (line: { from: string; text: string }) => void }`. Each function takes at most one
 * argument, the message's `data`.
 *
 * - Server events (messages the server sends, the first map of {@link connect}): the type of
 *   the listener, so `on("chat", fn)` types `fn`'s argument.
 * - Client events (messages you {@link Namespace.emit}, the second map): the server handler's
 *   signature, data in and reply out, so `emit("say", data)` types `data` and resolves with the
 *   return type (a `Promise`'s value, if it is one).
 */
export interface EventsMap {
  [event: string]: any;
}

/** The map used when none is given: any event, any data, any reply. */
export interface DefaultEvents {
  [event: string]: (data?: any) => any;
}

/** The events of map `M` that are not reserved. */
export type EventNames<M extends EventsMap> = Exclude<keyof M & string, keyof ReservedEvents>;

/** An event's `data` parameter as a tuple (`[]` for an event without one). */
type DataArgs<F> = F extends (...args: infer A) => any ? A : [data?: unknown];

/** What `emit` takes after the event name: the event's data, then {@link EmitOptions}. An event
 * without data takes `undefined` in its place when options follow. */
export type EmitArgs<F> = DataArgs<F> extends []
  ? [data?: undefined, options?: EmitOptions]
  : [...DataArgs<F>, options?: EmitOptions];

/** The reply `emit` resolves with: the handler's return type, awaited. */
export type ReplyOf<F> = F extends (...args: any[]) => infer R ? Awaited<R> : any;

/** The arguments of an `onAny` listener: `(event, data)`, narrowed together by event. */
export type AnyArgs<M extends EventsMap> = {
  [E in EventNames<M>]: [event: E, data: DataArgs<M[E]>[0]];
}[EventNames<M>];

/** Options of one {@link Namespace.emit}. */
export interface EmitOptions {
  /**
   * Milliseconds to wait for the answer. Past them, the promise rejects with code `timeout`.
   * A message still in the outbox (offline, or behind a `POST` in flight) is then dropped and
   * never sent; one that went out may have reached the server's handler, so the client keeps
   * resending it with its id until the server answers: it is handled at most once, and may be
   * handled after its promise rejected. Default: none (an emit waits as long as it takes, up
   * to the dedup window).
   */
  timeout?: number;
}

/**
 * One namespace (spec §4a) of a client: the client itself is `/`, `client.of(name)` gives the
 * others. Each has its own listeners and sends to its own handler on the server, all over the
 * client's one connection.
 *
 * `S` maps the events the server sends to their listeners, `C` the events this client emits to
 * the handler's signature (see {@link EventsMap}). With maps, an unknown event or a wrong data
 * type is a compile error; without, anything goes.
 */
export interface Namespace<S extends EventsMap = DefaultEvents, C extends EventsMap = DefaultEvents> {
  /** Listens to a reserved event. */
  on<E extends keyof ReservedEvents>(event: E, fn: ReservedEvents[E]): this;
  /** Listens to messages `event` of this namespace; `fn` gets the message's `data` (bytes in it
   * as `Uint8Array`s). Each stored message arrives once and in order, even across reconnects;
   * volatile ones arrive at most once. When the server's sender waits for a reply
   * (`emit_with_ack`, spec §4c), what `fn` returns — or what its promise resolves to — is this
   * client's reply; with no listener, no reply is sent. */
  on<E extends EventNames<S>>(event: E, fn: S[E]): this;
  /** Like `on`, for the next one only. */
  once<E extends keyof ReservedEvents>(event: E, fn: ReservedEvents[E]): this;
  once<E extends EventNames<S>>(event: E, fn: S[E]): this;
  /** Removes `fn` (given to `on` or `once`), or every listener of `event` when `fn` is omitted. */
  off<E extends keyof ReservedEvents>(event: E, fn?: ReservedEvents[E]): this;
  off<E extends EventNames<S>>(event: E, fn?: S[E]): this;
  /** Calls `fn(event, data)` for every message of this namespace, before the listeners of its
   * event. Not for the reserved events. */
  onAny(fn: (...args: AnyArgs<S>) => void): this;
  /** Removes `fn` from the `onAny` listeners, or all of them when `fn` is omitted. */
  offAny(fn?: (...args: AnyArgs<S>) => void): this;
  /**
   * Sends a message to this namespace's handler on the server; resolves with the handler's
   * reply (bytes in it as `Uint8Array`s). `data` is any JSON-serializable value, with
   * {@link Bytes} anywhere in it. Transient failures never reject: the message waits (offline,
   * server down) and is retried with the same id, so the handler runs once. Rejects with the
   * handler's error, or if the server refuses this message (4xx, or an error ack such as
   * `forbidden` for a namespace the user may not use), the client is closed (`closed`), no
   * answer came within the dedup window (`expired`), or within `options.timeout` (`timeout`;
   * see {@link EmitOptions}).
   */
  emit<E extends keyof C & string>(event: E, ...args: EmitArgs<C[E]>): Promise<ReplyOf<C[E]>>;
}

/**
 * A client: `S` maps the events the server sends (their listeners), `C` the events this client
 * emits (the handler's signature, data to reply); see {@link EventsMap}.
 */
export class SimpleIO<S extends EventsMap = DefaultEvents, C extends EventsMap = DefaultEvents> {
  /**
   * Creates a client and starts receiving at once.
   * @param url the route, absolute or relative to the page; default: the page's origin +
   * `/simpleio`. Required outside a browser (else it throws an error with code `no_url`).
   */
  constructor(url?: string | URL, options?: Options);
  constructor(options?: Options);
  /** This client's id (spec §2): random, kept for the object's lifetime. */
  readonly id: string;
  /** True between `connect` and `disconnect`: the last poll got an answer. */
  readonly connected: boolean;
  /**
   * The handle of namespace `name` (e.g. `"/chat"`), the same object on every call; `of("/")`
   * is the client itself. Its event maps are its own (`of<ChatServer, ChatClient>("/chat")`).
   * Every poll lists all namespaces obtained so far. Best called in the
   * same tick as `connect`, so the first poll already lists it; called later, the client ends
   * its waiting poll and polls again at once with it, and the namespace delivers from then on
   * (spec §4a). A namespace the server lacks, or the user may not use, is reported as an
   * `error` (400 `unknown_namespace`, or the server's 401/403) and stops the whole poll: there
   * is no way to drop a namespace from a client, so close it and connect again without it.
   */
  of<NS extends EventsMap = DefaultEvents, NC extends EventsMap = DefaultEvents>(
    name: string,
  ): Namespace<NS, NC>;
  /** Stops: aborts requests in flight, sends nothing more, rejects pending emits (`closed`). */
  close(): void;
}
/** The client is the `/` namespace: `on`, `off` and `emit` act there. */
export interface SimpleIO<S extends EventsMap = DefaultEvents, C extends EventsMap = DefaultEvents>
  extends Namespace<S, C> {}

/**
 * Creates a client and starts receiving at once; same as `new SimpleIO(url, options)`. The
 * type parameters are the event maps (server events, then client events; see
 * {@link EventsMap}):
 *
 * ```ts
 * interface ServerEvents { chat: (line: { from: string; text: string }) => void }
 * interface ClientEvents { say: (text: string) => { ok: boolean } }
 * const io = connect<ServerEvents, ClientEvents>();
 * io.on("chat", (line) => show(line.from, line.text));
 * const { ok } = await io.emit("say", "hello");
 * ```
 */
export function connect<S extends EventsMap = DefaultEvents, C extends EventsMap = DefaultEvents>(
  url?: string | URL,
  options?: Options,
): SimpleIO<S, C>;
export function connect<S extends EventsMap = DefaultEvents, C extends EventsMap = DefaultEvents>(
  options?: Options,
): SimpleIO<S, C>;
