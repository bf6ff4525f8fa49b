// The page's one websocket to `api/events`: resumes with `since=<last cursor>` after any drop, with backoff.
import type { StreamMessage } from "../api/types";
import { type ConnectionState, Listeners, queryString } from "./transport";

/** The part of the browser's WebSocket this module uses (so tests can hand in a fake). */
export interface SocketLike {
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  close(code?: number, reason?: string): void;
}

export interface EventSocketDeps {
  createSocket: (url: string) => SocketLike;
  setTimeout: (fn: () => void, ms: number) => unknown;
  clearTimeout: (handle: unknown) => void;
  random: () => number;
}

/** Close codes of docs/api.md. */
export const FELL_BEHIND = 4000;
export const BAD_SINCE = 4400;

const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000];
const MAX_BACKOFF_MS = 10000;

export function backoffDelay(attempt: number, random: () => number): number {
  const base = BACKOFF_MS[attempt] ?? MAX_BACKOFF_MS;
  return Math.round(base * (0.8 + 0.4 * random()));
}

export class EventSocket {
  readonly messages = new Listeners<StreamMessage>();
  readonly states = new Listeners<ConnectionState>();
  /** The stream position after the last message received; `since` of the next socket. */
  cursor: string | null = null;
  state: ConnectionState = "closed";

  private socket: SocketLike | null = null;
  private attempt = 0;
  private timer: unknown = null;
  private stopped = true;
  /** A resumed socket's `hello` cursor is the stream's head, past the replay still to come: not ours. */
  private resumed = false;
  /** After a refused `since` the stream starts afresh, and whatever fell in between must be reloaded. */
  private resetOnHello = false;

  constructor(
    private readonly url: string,
    private readonly token: string | null,
    private readonly deps: EventSocketDeps,
  ) {}

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) this.deps.clearTimeout(this.timer);
    this.timer = null;
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onclose = null;
      socket.onmessage = null;
      socket.close(1000, "closed by the canvas");
    }
    this.setState("closed");
  }

  /** Reconnect now rather than at the end of the backoff (the page came back online or into view). */
  nudge(): void {
    if (this.stopped || this.socket) return;
    if (this.timer !== null) this.deps.clearTimeout(this.timer);
    this.timer = null;
    this.connect();
  }

  private connect(): void {
    this.timer = null;
    this.setState("connecting");
    this.resumed = this.cursor !== null;
    const url = this.url + queryString({ since: this.cursor, token: this.token });
    let socket: SocketLike;
    try {
      socket = this.deps.createSocket(url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    socket.onmessage = (ev) => this.receive(ev.data);
    socket.onerror = () => {
      // onclose follows and reconnects.
    };
    socket.onclose = (ev) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (ev.code === BAD_SINCE) {
        this.cursor = null;
        this.resetOnHello = true;
      }
      this.scheduleReconnect();
    };
  }

  private receive(data: unknown): void {
    if (typeof data !== "string") return;
    let message: StreamMessage;
    try {
      message = JSON.parse(data) as StreamMessage;
    } catch {
      return;
    }
    if (typeof message !== "object" || message === null) return;
    if (message.kind === "hello") {
      this.attempt = 0;
      if (!this.resumed || this.cursor === null) this.cursor = message.cursor;
      this.setState("open");
      this.messages.emit(message);
      if (this.resetOnHello) {
        this.resetOnHello = false;
        this.messages.emit({ kind: "reset", cursor: message.cursor });
      }
      return;
    }
    if ("cursor" in message && typeof message.cursor === "string" && message.cursor) this.cursor = message.cursor;
    this.messages.emit(message);
  }

  private scheduleReconnect(): void {
    if (this.stopped) return;
    this.setState("connecting");
    const delay = backoffDelay(this.attempt, this.deps.random);
    this.attempt += 1;
    this.timer = this.deps.setTimeout(() => this.connect(), delay);
  }

  private setState(state: ConnectionState): void {
    if (this.state === state) return;
    this.state = state;
    this.states.emit(state);
  }
}

interface Shared {
  socket: EventSocket;
  users: number;
}

const REGISTRY = Symbol.for("imagen-canvas.event-sockets");

function registry(): Map<string, Shared> {
  const holder = globalThis as unknown as Record<symbol, Map<string, Shared> | undefined>;
  let map = holder[REGISTRY];
  if (!map) {
    map = new Map();
    holder[REGISTRY] = map;
  }
  return map;
}

/**
 * The page-wide socket for `url`, shared by every canvas view on the page (each widget loads its own copy of
 * this module, so the registry lives on globalThis). `release` closes it when its last user goes.
 */
export function acquireEventSocket(
  url: string,
  token: string | null,
  deps: EventSocketDeps,
): { socket: EventSocket; release: () => void } {
  const map = registry();
  let shared = map.get(url);
  if (!shared) {
    shared = { socket: new EventSocket(url, token, deps), users: 0 };
    map.set(url, shared);
  }
  shared.users += 1;
  shared.socket.start();
  const entry = shared;
  let released = false;
  return {
    socket: entry.socket,
    release: () => {
      if (released) return;
      released = true;
      entry.users -= 1;
      if (entry.users <= 0) {
        entry.socket.stop();
        if (map.get(url) === entry) map.delete(url);
      }
    },
  };
}
