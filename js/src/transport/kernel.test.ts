import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { FakeWidgetModel } from "../tests/fake-widget-model";
import { image } from "../tests/fixtures";
import { REVOKE_GRACE_MS } from "../images/blob-cache";
import { KernelTransport } from "./kernel";
import { ApiError } from "./transport";

function setup(options: { timeoutMs?: number; readyRetryMs?: number } = {}) {
  const model = new FakeWidgetModel();
  const created: string[] = [];
  const revoked: string[] = [];
  let n = 0;
  const transport = new KernelTransport(
    model.asModel(),
    {
      viewId: "view-1",
      setTimeout: (fn, ms) => setTimeout(fn, ms),
      clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
      createObjectURL: () => {
        n += 1;
        const url = `blob:test/${n}`;
        created.push(url);
        return url;
      },
      revokeObjectURL: (url) => revoked.push(url),
    },
    options,
  );
  const requests = () => model.sent.filter((m) => m["type"] === "request");
  const answer = (request: Record<string, unknown>, status: number, body: unknown, buffers: DataView[] = []) =>
    model.receive({ type: "response", id: request["id"], view_id: request["view_id"], status, body }, buffers);
  return { model, transport, created, revoked, requests, answer };
}

describe("the kernel transport", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("says ready first, and again until the kernel answers", async () => {
    const { model, transport } = setup({ readyRetryMs: 1000 });
    expect(model.sent[0]).toEqual({ type: "ready", view_id: "view-1" });
    await vi.advanceTimersByTimeAsync(1000);
    expect(model.sent.filter((m) => m["type"] === "ready")).toHaveLength(2);
    expect(transport.connection).toBe("connecting");
    model.receive({ type: "event", event: { kind: "hello", cursor: "1", owner_user_id: "o", workers: [] } });
    await transport.ready;
    expect(transport.connection).toBe("open");
    await vi.advanceTimersByTimeAsync(10000);
    expect(model.sent.filter((m) => m["type"] === "ready")).toHaveLength(2);
  });

  it("matches each response to its request by id and view, ignoring other views'", async () => {
    const { transport, requests, answer, model } = setup();
    const a = transport.request("GET", "jobs/1");
    const b = transport.request("POST", "jobs", { body: { prompt: "fox" }, headers: { "Idempotency-Key": "g:0" } });
    const [ra, rb] = requests();
    expect(ra).toMatchObject({ type: "request", view_id: "view-1", method: "GET", path: "jobs/1" });
    expect(rb).toMatchObject({ method: "POST", path: "jobs", body: { prompt: "fox" }, headers: { "Idempotency-Key": "g:0" } });
    expect(ra?.["id"]).not.toBe(rb?.["id"]);
    model.receive({ type: "response", id: rb?.["id"], view_id: "view-2", status: 201, body: { id: "wrong" } });
    answer(rb as Record<string, unknown>, 201, { id: "job-b" });
    answer(ra as Record<string, unknown>, 200, { id: "job-a" });
    await expect(a).resolves.toEqual({ id: "job-a" });
    await expect(b).resolves.toEqual({ id: "job-b" });
  });

  it("sends the query without empty values", () => {
    const { transport, requests } = setup();
    void transport.request("GET", "jobs", { query: { canvas_id: "c", node_id: undefined, limit: 500, cursor: null } });
    expect(requests()[0]?.["query"]).toEqual({ canvas_id: "c", limit: "500" });
  });

  it("turns an error answer into an ApiError with the contract's code and field", async () => {
    const { transport, requests, answer } = setup();
    const p = transport.request("POST", "jobs", { body: {} });
    answer(requests()[0] as Record<string, unknown>, 400, { error: { code: "invalid_field", message: "size: not offered", field: "size" } });
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ status: 400, code: "invalid_field", field: "size", message: "size: not offered" });
  });

  it("times out a request the kernel never answers, and ignores a late answer", async () => {
    const { transport, requests, answer } = setup({ timeoutMs: 5000 });
    const p = transport.request("GET", "health");
    const settled = p.catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(5001);
    const err = await settled;
    expect(err).toMatchObject({ status: 0, code: "timeout" });
    answer(requests()[0] as Record<string, unknown>, 200, {});
  });

  it("forwards the kernel's stream events", () => {
    const { transport, model } = setup();
    const seen: unknown[] = [];
    transport.subscribe((m) => seen.push(m));
    model.receive({ type: "event", event: { kind: "canvas", canvas_id: "c", version: 3, ts: "" } });
    expect(seen).toEqual([{ kind: "canvas", canvas_id: "c", version: 3, ts: "" }]);
  });

  it("turns image bytes from buffers into a blob URL, shared while shown and revoked after", async () => {
    const { transport, requests, answer, created, revoked } = setup();
    const img = image({ url: null, thumbnail_url: null });
    const first = transport.loadImage(img, "thumbnail");
    const second = transport.loadImage(img, "thumbnail");
    expect(requests()).toHaveLength(1);
    expect(requests()[0]).toMatchObject({ path: `images/${img.id}/content`, query: { variant: "thumbnail" } });
    const png = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 1, 2, 3]);
    answer(requests()[0] as Record<string, unknown>, 200, null, [new DataView(png.buffer)]);
    const url = await first.src;
    expect(await second.src).toBe(url);
    expect(created).toEqual([url]);
    expect(transport.policy.allows(url)).toBe(true);
    first.release();
    second.release();
    await vi.advanceTimersByTimeAsync(REVOKE_GRACE_MS - 1);
    expect(revoked).toEqual([]);
    await vi.advanceTimersByTimeAsync(2);
    expect(revoked).toEqual([url]);
    expect(transport.liveImageUrls).toBe(0);
    expect(transport.policy.allows(url)).toBe(false);
  });

  it("keeps a released image that is shown again within the grace period", async () => {
    const { transport, requests, answer, revoked } = setup();
    const img = image();
    const lease = transport.loadImage(img, "full");
    answer(requests()[0] as Record<string, unknown>, 200, null, [new DataView(new Uint8Array([0xff, 0xd8, 0xff]).buffer)]);
    const url = await lease.src;
    lease.release();
    const again = transport.loadImage(img, "full");
    expect(await again.src).toBe(url);
    await vi.advanceTimersByTimeAsync(REVOKE_GRACE_MS * 2);
    expect(revoked).toEqual([]);
    expect(requests()).toHaveLength(1);
  });

  it("on dispose rejects what is pending, revokes every URL and stops listening", async () => {
    const { transport, model, requests, answer, revoked } = setup();
    const lease = transport.loadImage(image(), "thumbnail");
    answer(requests()[0] as Record<string, unknown>, 200, null, [new DataView(new Uint8Array([1]).buffer)]);
    const url = await lease.src;
    const pending = transport.request("GET", "jobs").catch((e: unknown) => e);
    transport.dispose();
    expect(await pending).toMatchObject({ code: "closed" });
    expect(revoked).toEqual([url]);
    expect(model.listeners("msg:custom")).toBe(0);
  });
});
