import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { FakeSocketFactory } from "../tests/fake-websocket";
import { image } from "../tests/fixtures";
import { BAD_SINCE, FELL_BEHIND, acquireEventSocket, backoffDelay } from "./event-socket";
import { ServerTransport, xsrfToken } from "./server";
import { ApiError } from "./transport";

function socketDeps(factory: FakeSocketFactory) {
  return {
    createSocket: factory.create,
    setTimeout: (fn: () => void, ms: number) => setTimeout(fn, ms),
    clearTimeout: (h: unknown) => clearTimeout(h as ReturnType<typeof setTimeout>),
    random: () => 0.5,
  };
}

let counter = 0;

function setup(opts: { baseUrl?: string; token?: string | null; cookie?: string } = {}) {
  counter += 1;
  const factory = new FakeSocketFactory();
  const calls: { url: string; init: RequestInit }[] = [];
  let reply: (url: string) => Response = () => new Response(JSON.stringify({ ok: true }), { status: 200 });
  const fetchFn = (async (url: string, init: RequestInit) => {
    calls.push({ url, init });
    return reply(url);
  }) as unknown as typeof fetch;
  const transport = new ServerTransport(
    { baseUrl: opts.baseUrl ?? `/user/u${counter}/`, token: opts.token ?? null },
    { fetch: fetchFn, pageUrl: "https://hub.example/lab", cookie: () => opts.cookie ?? "", socket: socketDeps(factory) },
  );
  return { transport, factory, calls, setReply: (f: typeof reply) => (reply = f) };
}

describe("REST requests", () => {
  it("go to {baseUrl}imagen/api/ with the XSRF header from the cookie and the page's token", async () => {
    const { transport, calls } = setup({ baseUrl: "/user/ann/", token: "tok", cookie: "a=1; _xsrf=2%7Cabc; b=2" });
    await transport.request("POST", "jobs", { body: { prompt: "fox" }, headers: { "Idempotency-Key": "g:0" } });
    const call = calls[0];
    expect(call?.url).toBe("/user/ann/imagen/api/jobs");
    expect(call?.init.method).toBe("POST");
    expect(call?.init.credentials).toBe("same-origin");
    expect(call?.init.headers).toMatchObject({
      "X-XSRFToken": "2|abc",
      Authorization: "token tok",
      "Content-Type": "application/json",
      "Idempotency-Key": "g:0",
    });
    expect(JSON.parse(String(call?.init.body))).toEqual({ prompt: "fox" });
    transport.dispose();
  });

  it("send no Authorization header without a token, and put the query in the URL", async () => {
    const { transport, calls } = setup({ baseUrl: "/" });
    await transport.request("GET", "jobs", { query: { canvas_id: "c 1", node_id: undefined, limit: 500 } });
    expect(calls[0]?.url).toBe("/imagen/api/jobs?canvas_id=c+1&limit=500");
    expect(calls[0]?.init.headers).not.toHaveProperty("Authorization");
    transport.dispose();
  });

  it("turn a 409 into an ApiError carrying the stored canvas", async () => {
    const { transport, setReply } = setup();
    setReply(() => new Response(JSON.stringify({ error: { code: "version_conflict", message: "stale", current: { version: 4 } } }), { status: 409 }));
    const err = await transport.request("PUT", "canvases/c").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).body?.error.current).toEqual({ version: 4 });
    transport.dispose();
  });

  it("say a network failure is one (status 0)", async () => {
    const factory = new FakeSocketFactory();
    const transport = new ServerTransport(
      { baseUrl: "/x/", token: null },
      { fetch: (async () => { throw new TypeError("Failed to fetch"); }) as unknown as typeof fetch, pageUrl: "http://h/", cookie: () => "", socket: socketDeps(factory) },
    );
    await expect(transport.request("GET", "health")).rejects.toMatchObject({ status: 0, code: "network" });
    transport.dispose();
  });

  it("read the XSRF cookie", () => {
    expect(xsrfToken("_xsrf=abc")).toBe("abc");
    expect(xsrfToken("other=1")).toBeNull();
  });
});

describe("image sources", () => {
  it("use the signed URL when it is on this server's imagen/ routes", () => {
    const { transport } = setup({ baseUrl: "/" });
    const img = image({ thumbnail_url: "/imagen/files/images/o/j.thumb.webp?expires=9&sig=s", expires_at: null });
    expect(transport.imageSrc(img, "thumbnail")).toBe("/imagen/files/images/o/j.thumb.webp?expires=9&sig=s");
    transport.dispose();
  });

  it("allow the storage origin from health, and nothing else", () => {
    const { transport } = setup({ baseUrl: "/" });
    const img = image({ url: "https://proj.supabase.co/storage/v1/object/sign/images/a.png?token=t", expires_at: null });
    expect(transport.imageSrc(img, "full")).toBe(`/imagen/api/images/${img.id}/content?variant=full`);
    transport.setStorageOrigin("https://proj.supabase.co");
    expect(transport.imageSrc(img, "full")).toBe(img.url);
    const evil = image({ url: "https://evil.example/x.png" });
    expect(transport.imageSrc(evil, "full")).toBe(`/imagen/api/images/${evil.id}/content?variant=full`);
    expect(transport.policy.allows("javascript:alert(1)")).toBe(false);
    expect(transport.policy.allows("data:image/png;base64,AAAA")).toBe(false);
    expect(transport.policy.allows("https://hub.example/other/path.png")).toBe(false);
    transport.dispose();
  });

  it("go through the content route once the signed URL is about to expire", () => {
    const { transport } = setup({ baseUrl: "/" });
    const now = Date.parse("2026-12-01T10:00:00Z");
    const img = image({ thumbnail_url: "/imagen/files/a.webp", expires_at: "2026-12-01T10:00:10Z" });
    expect(transport.imageSrc(img, "thumbnail", now)).toBe(`/imagen/api/images/${img.id}/content?variant=thumbnail`);
    const fresh = image({ thumbnail_url: "/imagen/files/b.webp", expires_at: "2999-01-01T00:00:00Z" });
    // A fresh URL that fails to load anyway (revoked, the file moved) is retried through the content route.
    expect(transport.loadImage(fresh, "thumbnail").fallback).toBe(`/imagen/api/images/${fresh.id}/content?variant=thumbnail`);
    transport.dispose();
  });
});

describe("the events socket", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("is one per page, shared by every view, closed when the last one goes", () => {
    const factory = new FakeSocketFactory();
    const a = acquireEventSocket("ws://h/imagen/api/events", null, socketDeps(factory));
    const b = acquireEventSocket("ws://h/imagen/api/events", null, socketDeps(factory));
    expect(a.socket).toBe(b.socket);
    expect(factory.sockets).toHaveLength(1);
    a.release();
    expect(factory.last.closed).toBeNull();
    b.release();
    expect(factory.last.closed).toMatchObject({ code: 1000 });
  });

  it("resumes with since=<last cursor> after a drop, so no event is missed", async () => {
    const { transport, factory } = setup({ token: "tok" });
    const seen: unknown[] = [];
    const states: string[] = [];
    transport.subscribe((m) => seen.push(m));
    transport.onConnection((s) => states.push(s));
    const first = factory.last;
    expect(first.url).toMatch(/^wss:\/\/hub\.example\/user\/u\d+\/imagen\/api\/events\?token=tok$/);
    first.message({ kind: "hello", cursor: "h1", owner_user_id: "o", workers: [] });
    expect(transport.connection).toBe("open");
    first.message({ event_id: 1, job_id: "j", kind: "state", status: "running", cursor: "c1" });
    first.drop(1006);
    expect(transport.connection).toBe("connecting");
    await vi.advanceTimersByTimeAsync(backoffDelay(0, () => 0.5));
    const second = factory.last;
    expect(second).not.toBe(first);
    expect(second.since).toBe("c1");
    // A resumed socket's hello cursor is the head: the replay after it is what moves the cursor.
    second.message({ kind: "hello", cursor: "h9", owner_user_id: "o", workers: [] });
    second.message({ event_id: 2, job_id: "j", kind: "state", status: "done", cursor: "c2" });
    second.drop(FELL_BEHIND, "fell behind: reconnect with since");
    await vi.advanceTimersByTimeAsync(1000);
    expect(factory.last.since).toBe("c2");
    expect(seen.filter((m) => (m as { kind: string }).kind === "state")).toHaveLength(2);
    expect(states).toEqual(["open", "connecting", "open", "connecting"]);
    transport.dispose();
  });

  it("backs off longer after each failed attempt, and resets after a hello", async () => {
    const factory = new FakeSocketFactory();
    const shared = acquireEventSocket("ws://h/backoff", null, socketDeps(factory));
    const delays = [0, 1, 2, 3].map((i) => backoffDelay(i, () => 0.5));
    expect(delays).toEqual([250, 500, 1000, 2000]);
    factory.last.drop();
    await vi.advanceTimersByTimeAsync(249);
    expect(factory.sockets).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(factory.sockets).toHaveLength(2);
    factory.last.drop();
    await vi.advanceTimersByTimeAsync(499);
    expect(factory.sockets).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(factory.sockets).toHaveLength(3);
    factory.last.message({ kind: "hello", cursor: "h", owner_user_id: "o", workers: [] });
    factory.last.drop();
    await vi.advanceTimersByTimeAsync(250);
    expect(factory.sockets).toHaveLength(4);
    shared.release();
  });

  it("starts afresh after a refused since (4400) and asks the view to reload", async () => {
    const factory = new FakeSocketFactory();
    const shared = acquireEventSocket("ws://h/bad-since", null, socketDeps(factory));
    const seen: { kind: string }[] = [];
    shared.socket.messages.add((m) => seen.push(m as { kind: string }));
    factory.last.message({ kind: "hello", cursor: "h1", owner_user_id: "o", workers: [] });
    factory.last.drop();
    await vi.advanceTimersByTimeAsync(300);
    expect(factory.last.since).toBe("h1");
    factory.last.drop(BAD_SINCE, "since: malformed");
    await vi.advanceTimersByTimeAsync(600);
    expect(factory.last.since).toBeNull();
    factory.last.message({ kind: "hello", cursor: "h2", owner_user_id: "o", workers: [] });
    expect(seen.map((m) => m.kind)).toEqual(["hello", "hello", "reset"]);
    shared.release();
  });
});
