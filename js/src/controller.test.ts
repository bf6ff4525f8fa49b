import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { Job, JobCreate, StreamMessage } from "./api/types";
import { CanvasController } from "./controller";
import { addImageNode, updateNodeData } from "./state/store";
import { event, image, job } from "./tests/fixtures";
import { type ConnectionState, type HttpMethod, type ImageLease, Listeners, type RequestOptions, type Transport, ApiError } from "./transport/transport";

/** A transport over an in-memory backend: routes answered by the test, events pushed by it. */
class FakeTransport implements Transport {
  readonly kind = "server" as const;
  connection: ConnectionState = "open";
  readonly messages = new Listeners<StreamMessage>();
  readonly states = new Listeners<ConnectionState>();
  readonly calls: { method: HttpMethod; path: string; options: RequestOptions | undefined }[] = [];
  jobs = new Map<string, Job>();

  async request<T>(method: HttpMethod, path: string, options?: RequestOptions): Promise<T> {
    this.calls.push({ method, path, options });
    if (path === "health") return { database: "embedded", pending_migrations: [], storage_origin: null, error: null } as T;
    if (path === "providers") return { default_provider: "local", providers: [] } as T;
    if (path.startsWith("canvases/")) {
      if (method === "GET") throw new ApiError(404, "not_found", "no canvas");
      return { ...(options?.body as object), version: 1 } as T;
    }
    if (path === "jobs" && method === "GET") return { jobs: [...this.jobs.values()], next_cursor: null } as T;
    if (path === "jobs" && method === "POST") {
      const body = options?.body as JobCreate;
      const created = job({ node_id: body.node_id ?? null, group_id: body.group_id ?? null, prompt: body.prompt, spec: body.seed !== undefined ? { seed: body.seed } : {} });
      this.jobs.set(created.id, created);
      return created as T;
    }
    const id = path.split("/")[1] ?? "";
    const found = this.jobs.get(id);
    if (path.endsWith("/cancel") && found) {
      const cancelled = { ...found, status: "cancelled" as const };
      this.jobs.set(id, cancelled);
      return cancelled as T;
    }
    if (found) return found as T;
    throw new ApiError(404, "not_found", path);
  }

  subscribe(listener: (m: StreamMessage) => void) {
    return this.messages.add(listener);
  }
  onConnection(listener: (s: ConnectionState) => void) {
    return this.states.add(listener);
  }
  loadImage(): ImageLease {
    return { src: Promise.resolve("blob:x"), fallback: null, release: () => undefined };
  }
  imageUrl(): null {
    return null;
  }
  setStorageOrigin(): void {}
  dispose(): void {}
}

async function started() {
  const transport = new FakeTransport();
  const controller = new CanvasController(transport, "canvas-1", { debounceMs: 10 });
  await controller.start();
  return { transport, controller, store: controller.store };
}

describe("the canvas controller", () => {
  beforeEach(() => vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] }));
  afterEach(() => vi.useRealTimers());

  it("submits one group of `variants` jobs with one Idempotency-Key each and shows the first", async () => {
    const { transport, controller, store } = await started();
    const id = addImageNode(store, { x: 0, y: 0 });
    updateNodeData(store, id, { prompt: "a fox", variants: 2, seed: 10, seed_locked: true });
    await controller.generate(id);
    const posts = transport.calls.filter((c) => c.method === "POST" && c.path === "jobs");
    expect(posts).toHaveLength(2);
    const groups = new Set(posts.map((p) => (p.options?.body as JobCreate).group_id));
    expect(groups.size).toBe(1);
    const [group] = [...groups];
    expect(group).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(posts.map((p) => p.options?.headers?.["Idempotency-Key"])).toEqual([`${group}:0`, `${group}:1`]);
    expect(posts.map((p) => (p.options?.body as JobCreate).seed)).toEqual([10, 11]);
    const state = store.getState();
    const node = state.nodes.find((n) => n.id === id);
    expect(node?.type === "image" && node.data.current_job_id).toBe(state.nodeJobs[id]?.[0]?.id);
  });

  it("stores a new canvas before its first job names it", async () => {
    const { transport, controller, store } = await started();
    const id = addImageNode(store, { x: 0, y: 0 });
    updateNodeData(store, id, { prompt: "a fox" });
    await controller.generate(id);
    const order = transport.calls.filter((c) => c.method !== "GET").map((c) => `${c.method} ${c.path}`);
    expect(order).toEqual(["PUT canvases/canvas-1", "POST jobs"]);
  });

  it("follows the job live and fetches it when done, so the node gets its image, cost and times", async () => {
    const { transport, controller, store } = await started();
    const id = addImageNode(store, { x: 0, y: 0 });
    updateNodeData(store, id, { prompt: "a fox" });
    await controller.generate(id);
    const submitted = store.getState().nodeJobs[id]?.[0] as Job;
    transport.messages.emit(event(submitted.id, { node_id: id, kind: "state", status: "running" }));
    transport.messages.emit(event(submitted.id, { node_id: id, kind: "progress", progress: 0.5 }));
    expect(store.getState().jobs[submitted.id]).toMatchObject({ status: "running", progress: 0.5 });
    const img = image();
    transport.jobs.set(submitted.id, { ...submitted, status: "done", image_id: img.id, image: img, cost_usd: 0 });
    transport.messages.emit(event(submitted.id, { node_id: id, kind: "state", status: "done", image_id: img.id }));
    await vi.waitFor(() => expect(store.getState().jobs[submitted.id]?.image?.id).toBe(img.id));
  });

  it("refetches jobs still running when the stream comes back after a drop", async () => {
    const { transport, controller, store } = await started();
    const id = addImageNode(store, { x: 0, y: 0 });
    updateNodeData(store, id, { prompt: "a fox" });
    await controller.generate(id);
    const submitted = store.getState().nodeJobs[id]?.[0] as Job;
    transport.jobs.set(submitted.id, { ...submitted, status: "done" });
    transport.states.emit("connecting");
    transport.states.emit("open");
    await vi.waitFor(() => expect(store.getState().jobs[submitted.id]?.status).toBe("done"));
  });

  it("fetches a running job that went quiet, so a lost event never leaves a node spinning", async () => {
    vi.useRealTimers();
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"] });
    const { transport, controller, store } = await started();
    const id = addImageNode(store, { x: 0, y: 0 });
    updateNodeData(store, id, { prompt: "a fox" });
    await controller.generate(id);
    const submitted = store.getState().nodeJobs[id]?.[0] as Job;
    transport.jobs.set(submitted.id, { ...submitted, status: "done" });
    await vi.advanceTimersByTimeAsync(5000);
    expect(store.getState().jobs[submitted.id]?.status).toBe("pending");
    await vi.advanceTimersByTimeAsync(12000);
    expect(store.getState().jobs[submitted.id]?.status).toBe("done");
    await controller.dispose();
  });

  it("says on the node why Generate did nothing, and submits nothing", async () => {
    const { transport, controller, store } = await started();
    const id = addImageNode(store, { x: 0, y: 0 });
    await controller.generate(id);
    expect(store.getState().nodeErrors[id]).toBe("Type a prompt first.");
    expect(transport.calls.some((c) => c.method === "POST")).toBe(false);
  });

  it("cancels the running jobs of the generation a node shows", async () => {
    const { transport, controller, store } = await started();
    const id = addImageNode(store, { x: 0, y: 0 });
    updateNodeData(store, id, { prompt: "a fox", variants: 2 });
    await controller.generate(id);
    await controller.cancel(id);
    expect(transport.calls.filter((c) => c.path.endsWith("/cancel"))).toHaveLength(2);
    expect(store.getState().nodeJobs[id]?.every((j) => j.status === "cancelled")).toBe(true);
  });

  it("shows a generation made elsewhere (the notebook) on its node when it is the newest", async () => {
    const { transport, store } = await started();
    const id = addImageNode(store, { x: 0, y: 0 });
    const made = job({ node_id: id, group_id: "g-py" });
    transport.jobs.set(made.id, made);
    transport.messages.emit(event(made.id, { node_id: id, kind: "state", status: "pending" }));
    await vi.waitFor(() => {
      const node = store.getState().nodes.find((n) => n.id === id);
      expect(node?.type === "image" && node.data.current_job_id).toBe(made.id);
    });
  });

  it("saves the canvas after an edit", async () => {
    const { transport, store } = await started();
    addImageNode(store, { x: 5, y: 6 });
    await vi.advanceTimersByTimeAsync(50);
    const put = transport.calls.find((c) => c.method === "PUT");
    expect(put?.path).toBe("canvases/canvas-1");
    expect((put?.options?.body as { version: number; nodes: unknown[] }).version).toBe(0);
    expect((put?.options?.body as { nodes: { position_x: number }[] }).nodes[0]?.position_x).toBe(5);
  });
});
