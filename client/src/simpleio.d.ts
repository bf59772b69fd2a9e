// Type declarations for the simpleio browser client (hand-written; copied to dist/ by the build).
// The protocol it speaks is docs/spec.md, version 1, with namespaces (§4a) and bytes (§4b).

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
   * `closed` (the client was closed), `expired` (no answer within the dedup window). Undefined
   * for network errors and timeouts. */
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
 * namespace handle alike), since all share one connection. */
export interface ReservedEvents {
  /** A poll got an answer after none had (at start, or after a disconnect). */
  connect: () => void;
  /** A poll failed after the connection had been up, or the client was closed. */
  disconnect: (reason: SimpleIOError) => void;
  /** The server refused a poll (4xx, e.g. 401/403 while signed out, 403 from a namespace's
   * authorization, 400 `unknown_namespace`), or a send with 401/403. A refused namespace refuses
   * the whole poll, so nothing arrives until it is allowed. The client keeps retrying at the
   * longest backoff. */
  error: (error: SimpleIOError) => void;
}

/**
 * One namespace (spec §4a) of a client: the client itself is `/`, `client.of(name)` gives the
 * others. Each has its own listeners and sends to its own handler on the server, all over the
 * client's one connection.
 */
export interface Namespace {
  /** Listens to a reserved event. */
  on<E extends keyof ReservedEvents>(event: E, fn: ReservedEvents[E]): this;
  /** Listens to messages `event` of this namespace; `fn` gets the message's `data` (bytes in it
   * as `Uint8Array`s). Each stored message arrives once and in order, even across reconnects;
   * volatile ones arrive at most once. When the server's sender waits for a reply
   * (`emit_with_ack`, spec §4c), what `fn` returns — or what its promise resolves to — is this
   * client's reply; with no listener, no reply is sent. */
  on(event: string, fn: (data: any) => unknown): this;
  /** Removes `fn`, or every listener of `event` when `fn` is omitted. */
  off(event: string, fn?: (...args: any[]) => void): this;
  /**
   * Sends a message to this namespace's handler on the server; resolves with the handler's
   * reply (bytes in it as `Uint8Array`s). `data` is any JSON-serializable value, with
   * {@link Bytes} anywhere in it. Transient failures never reject: the message waits (offline,
   * server down) and is retried with the same id, so the handler runs once. Rejects with the
   * handler's error, or if the server refuses this message (4xx, or an error ack such as
   * `forbidden` for a namespace the user may not use), the client is closed (`closed`), or no
   * answer came within the dedup window (`expired`).
   */
  emit<R = any>(event: string, data?: unknown): Promise<R>;
}

export class SimpleIO {
  /**
   * Creates a client and starts receiving at once.
   * @param url the route, absolute or relative to the page; default: the page's origin +
   * `/simpleio`. Required outside a browser.
   */
  constructor(url?: string | URL, options?: Options);
  constructor(options?: Options);
  /** This client's id (spec §2): random, kept for the object's lifetime. */
  readonly id: string;
  /** True between `connect` and `disconnect`: the last poll got an answer. */
  readonly connected: boolean;
  /**
   * The handle of namespace `name` (e.g. `"/chat"`), the same object on every call; `of("/")`
   * is the client itself. Every poll lists all namespaces obtained so far. Best called in the
   * same tick as `connect`, so the first poll already lists it; called later, the client ends
   * its waiting poll and polls again at once with it, and the namespace delivers from then on
   * (spec §4a). A namespace the server lacks, or the user may not use, is reported as an
   * `error` (400 `unknown_namespace`, or the server's 401/403) and stops the whole poll: there
   * is no way to drop a namespace from a client, so close it and connect again without it.
   */
  of(name: string): Namespace;
  /** Stops: aborts requests in flight, sends nothing more, rejects pending emits (`closed`). */
  close(): void;
}
/** The client is the `/` namespace: `on`, `off` and `emit` act there. */
export interface SimpleIO extends Namespace {}

/** Creates a client and starts receiving at once; same as `new SimpleIO(url, options)`. */
export function connect(url?: string | URL, options?: Options): SimpleIO;
export function connect(options?: Options): SimpleIO;
