// Type declarations for the simpleio browser client (hand-written; copied to dist/ by the build).
// The protocol it speaks is docs/spec.md, version 1.

/** Options of {@link connect} / {@link SimpleIO}. Every field is optional. */
export interface Options {
  /** Extra request headers (e.g. `Authorization`), or a function returning them before each
   * request, so a token can be refreshed. */
  headers?: Record<string, string> | (() => Record<string, string> | Promise<Record<string, string>>);
  /** `fetch`'s credentials mode; `"include"` to send cookies to another origin. */
  credentials?: RequestCredentials;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** Request timeout in ms, a little above the server's hold time. Default 35000. */
  timeout?: number;
  /** Backoff after a failure: min(backoffMax, backoffBase × 2^attempts) × random(0.5, 1).
   * Defaults 500 and 30000 ms. */
  backoffBase?: number;
  backoffMax?: number;
  /** The server's dedup window in ms (default 600000): a message sent but not answered
   * within it rejects with code `expired` instead of being resent. */
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
}

/** The reserved events, raised by the client itself. */
export interface ReservedEvents {
  /** A poll got an answer after none had (at start, or after a disconnect). */
  connect: () => void;
  /** A poll failed after the connection had been up, or the client was closed. */
  disconnect: (reason: SimpleIOError) => void;
  /** The server refused a poll (4xx, e.g. 401/403 while signed out), or a send with 401/403.
   * The client keeps retrying at the longest backoff. */
  error: (error: SimpleIOError) => void;
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
  /** Listens to a reserved event. */
  on<E extends keyof ReservedEvents>(event: E, fn: ReservedEvents[E]): this;
  /** Listens to messages `event` from the server; `fn` gets the message's `data`. Each stored
   * message arrives once and in order, even across reconnects; volatile ones arrive at most once. */
  on(event: string, fn: (data: any) => void): this;
  /** Removes `fn`, or every listener of `event` when `fn` is omitted. */
  off(event: string, fn?: (...args: any[]) => void): this;
  /**
   * Sends a message to the server's handler; resolves with the handler's reply. Transient
   * failures never reject: the message waits (offline, server down) and is retried with the
   * same id, so the handler runs once. Rejects with the handler's error, or if the server
   * refuses this message (4xx), the client is closed (`closed`), or no answer came within the
   * dedup window (`expired`).
   */
  emit<R = any>(event: string, data?: unknown): Promise<R>;
  /** Stops: aborts requests in flight, sends nothing more, rejects pending emits (`closed`). */
  close(): void;
}

/** Creates a client and starts receiving at once; same as `new SimpleIO(url, options)`. */
export function connect(url?: string | URL, options?: Options): SimpleIO;
export function connect(options?: Options): SimpleIO;
