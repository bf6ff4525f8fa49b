import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { GenerateGraph, Job, StreamMessage } from "./api/types";
import { CanvasController } from "./controller";
import { addImageNode, addPromptNode, connect, updateNodeData } from "./state/store";
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
  /** Errors the next Generate requests fail with, in turn (then they succeed). */
  generateFailures: ApiError[] = [];
  /** Called while a Generate request is out, before it is answered. */
  onGenerate: (() => void) | null = null;

  async request<T>(method: HttpMethod, path: string, options?: RequestOptions): Promise<T> {
    this.calls.push({ method, path, options });
    if (path === "health") return { database: "embedded", pending_migrations: [], storage_origin: null, error: null } as T;
    if (path === "providers") return { default_provider: "local", providers: [] } as T;
    const generate = /^canvases\/([^/]+)\/nodes\/([^/]+)\/generate$/.exec(path);
    if (generate && method === "POST") {
      // The server's part (imagen_worker.service.generate, tested in Python): one job per variant, one group.
      this.onGenerate?.();
      const failure = this.generateFailures.shift();
      if (failure) throw failure;
      const nodeId = decodeURIComponent(generate[2] ?? "");
      const node = (options?.body as GenerateGraph).nodes.find((n) => n.id === nodeId);
      const prompt = typeof node?.data["prompt"] === "string" ? node.data["prompt"] : "";
      if (!prompt.trim()) throw new ApiError(400, "invalid_field", "prompt: type a prompt first");
      const variants = typeof node?.data["variants"] === "number" ? node.data["variants"] : 1;
      const group = `group-${this.calls.length}`;
      const jobs = Array.from({ length: variants }, () => job({ node_id: nodeId, group_id: group, prompt }));
      for (const created of jobs) this.jobs.set(created.id, created);
      return { jobs } as T;
    }
    if (path.startsWith("canvases/")) {
      if (method === "GET") throw new ApiError(404, "not_found", "no canvas");
      return { ...(options?.body as object), version: 1 } as T;
    }
    if (path === "jobs" && method === "GET") return { jobs: [...this.jobs.values()], next_cursor: null } as T;
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

  it("sends one Generate request carrying the node and its inputs, with an Idempotency-Key, and shows the first job", async () => {
    const { transport, controller, store } = await started();
    const prompt = addPromptNode(store, { x: 0, y: 0 }, { text: "a lighthouse" });
    const id = addImageNode(store, { x: 300, y: 0 });
    addImageNode(store, { x: 600, y: 0 }); // not connected: not sent
    connect(store, { source: prompt, target: id, sourceHandle: null, targetHandle: null });
    updateNodeData(store, id, { prompt: "a fox", variants: 2, seed: 10, seed_locked: true });
    await controller.generate(id);
    const posts = transport.calls.filter((c) => c.method === "POST");
    expect(posts.map((p) => p.path)).toEqual([`canvases/canvas-1/nodes/${id}/generate`]);
    const graph = posts[0]?.options?.body as GenerateGraph;
    expect(graph.nodes.map((n) => n.id)).toEqual([id, prompt]);
    expect(graph.edges.map((e) => [e.source, e.target])).toEqual([[prompt, id]]);
    expect(graph.nodes[0]?.data).toMatchObject({ prompt: "a fox", variants: 2, seed: 10, seed_locked: true });
    expect(posts[0]?.options?.headers?.["Idempotency-Key"]).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    const state = store.getState();
    expect(state.nodeJobs[id]).toHaveLength(2);
    const node = state.nodes.find((n) => n.id === id);
    expect(node?.type === "image" && node.data.current_job_id).toBe(state.nodeJobs[id]?.[0]?.id);
  });

  it("stores a new canvas before its first job names it", async () => {
    const { transport, controller, store } = await started();
    const id = addImageNode(store, { x: 0, y: 0 });
    updateNodeData(store, id, { prompt: "a fox" });
    await controller.generate(id);
    const order = transport.calls.filter((c) => c.method !== "GET").map((c) => `${c.method} ${c.path}`);
    expect(order).toEqual(["PUT canvases/canvas-1", `POST canvases/canvas-1/nodes/${id}/generate`]);
  });

  it("sends unsaved edits with the request instead of saving first (one request from click to queued)", async () => {
    const { transport, controller, store } = await started();
    const id = addImageNode(store, { x: 0, y: 0 });
    await vi.advanceTimersByTimeAsync(50); // the canvas is stored
    const before = transport.calls.length;
    updateNodeData(store, id, { prompt: "typed just now" });
    await controller.generate(id);
    const sent = transport.calls.slice(before).filter((c) => c.method !== "GET");
    expect(sent.map((c) => c.method)).toEqual(["POST"]);
    expect((sent[0]?.options?.body as GenerateGraph).nodes[0]?.data["prompt"]).toBe("typed just now");
  });

  it("shows the node pending while the request is out, and a locked seed with no value gets one first", async () => {
    const { transport, controller, store } = await started();
    const id = addImageNode(store, { x: 0, y: 0 });
    updateNodeData(store, id, { prompt: "a fox", seed_locked: true });
    const during: boolean[] = [];
    transport.onGenerate = () => during.push(store.getState().submitting[id] === true);
    await controller.generate(id);
    expect(during).toEqual([true]);
    expect(store.getState().submitting[id]).toBeUndefined();
    const node = store.getState().nodes.find((n) => n.id === id);
    expect(node?.type === "image" && typeof node.data.seed).toBe("number");
  });

  it("retries a Generate lost to the network once, with the same Idempotency-Key", async () => {
    const { transport, controller, store } = await started();
    const id = addImageNode(store, { x: 0, y: 0 });
    updateNodeData(store, id, { prompt: "a fox" });
    transport.generateFailures.push(new ApiError(0, "network", "the connection dropped"));
    const done = controller.generate(id);
    await vi.advanceTimersByTimeAsync(1000);
    await done;
    const posts = transport.calls.filter((c) => c.method === "POST");
    expect(posts).toHaveLength(2);
    expect(posts[1]?.options?.headers?.["Idempotency-Key"]).toBe(posts[0]?.options?.headers?.["Idempotency-Key"]);
    expect(store.getState().nodeJobs[id]).toHaveLength(1);
    expect(store.getState().nodeErrors[id]).toBeUndefined();
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

  it("says on the node why the server made no job, and clears it on the next Generate that works", async () => {
    const { controller, store } = await started();
    const id = addImageNode(store, { x: 0, y: 0 });
    await controller.generate(id);
    expect(store.getState().nodeErrors[id]).toBe("prompt: type a prompt first");
    expect(store.getState().submitting[id]).toBeUndefined();
    expect(store.getState().nodeJobs[id]).toBeUndefined();
    updateNodeData(store, id, { prompt: "a fox" });
    await controller.generate(id);
    expect(store.getState().nodeErrors[id]).toBeUndefined();
    expect(store.getState().nodeJobs[id]).toHaveLength(1);
  });

  it("says on a prompt node that feeds no image node why it ran nothing", async () => {
    const { transport, controller, store } = await started();
    const prompt = addPromptNode(store, { x: 0, y: 0 }, { text: "a fox" });
    await controller.generate(prompt);
    expect(store.getState().nodeErrors[prompt]).toContain("Connect this prompt");
    expect(transport.calls.some((c) => c.method === "POST")).toBe(false);
  });

  it("a prompt node runs each image node it feeds, one request each", async () => {
    const { transport, controller, store } = await started();
    const prompt = addPromptNode(store, { x: 0, y: 0 }, { text: "a fox" });
    const a = addImageNode(store, { x: 300, y: 0 }, { prompt: "x" });
    const b = addImageNode(store, { x: 600, y: 0 }, { prompt: "y" });
    connect(store, { source: prompt, target: a, sourceHandle: null, targetHandle: null });
    connect(store, { source: prompt, target: b, sourceHandle: null, targetHandle: null });
    await controller.generate(prompt);
    const posts = transport.calls.filter((c) => c.method === "POST").map((c) => c.path);
    expect(posts.sort()).toEqual([`canvases/canvas-1/nodes/${a}/generate`, `canvases/canvas-1/nodes/${b}/generate`].sort());
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
