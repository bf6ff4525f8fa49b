// A stand-in for the browser's WebSocket in unit tests: the test opens, feeds and drops each socket.
import type { SocketLike } from "../transport/event-socket";

export class FakeSocket implements SocketLike {
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  closed: { code?: number; reason?: string } | null = null;

  constructor(readonly url: string) {}

  get since(): string | null {
    return new URL(this.url).searchParams.get("since");
  }

  open(): void {
    this.onopen?.({});
  }

  message(payload: unknown): void {
    this.onmessage?.({ data: JSON.stringify(payload) });
  }

  /** The server (or the network) drops the socket. */
  drop(code = 1006, reason = ""): void {
    this.onclose?.({ code, reason });
  }

  close(code?: number, reason?: string): void {
    this.closed = { code, reason };
  }
}

export class FakeSocketFactory {
  readonly sockets: FakeSocket[] = [];

  readonly create = (url: string): FakeSocket => {
    const socket = new FakeSocket(url);
    this.sockets.push(socket);
    return socket;
  };

  get last(): FakeSocket {
    const socket = this.sockets[this.sockets.length - 1];
    if (!socket) throw new Error("no socket was opened");
    return socket;
  }
}
