import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { Canvas, CanvasNode, CanvasPut } from "../api/types";
import { ApiError } from "../transport/transport";
import { CanvasSync, type DocHolder } from "./canvas-sync";
import { type CanvasDoc, docFromCanvas, emptyDoc } from "./doc";
import { mergeDocs } from "./merge";

const node = (id: string, data: Record<string, unknown> = {}, x = 0): CanvasNode => ({ id, type: "image", position_x: x, position_y: 0, data });
const doc = (nodes: CanvasNode[], edges: CanvasDoc["edges"] = []): CanvasDoc => ({ ...emptyDoc(), nodes, edges });
const edge = (id: string, source: string, target: string) => ({ id, source, target, source_handle: null, target_handle: null });

function canvas(version: number, d: CanvasDoc): Canvas {
  return { id: "c1", owner_user_id: "o", name: "Untitled canvas", version, viewport: d.viewport, nodes: d.nodes, edges: d.edges, created_at: "", updated_at: "" };
}

/** A server that stores one canvas with versions, as `PUT canvases/{id}` does. */
class FakeCanvasServer {
  stored: Canvas | null = null;
  puts: CanvasPut[] = [];
  gets = 0;

  async canvas(): Promise<Canvas> {
    this.gets += 1;
    if (!this.stored) throw new ApiError(404, "not_found", "no such canvas");
    return structuredClone(this.stored);
  }

  async saveCanvas(_id: string, body: CanvasPut): Promise<Canvas> {
    this.puts.push(structuredClone(body));
    const version = this.stored?.version ?? 0;
    if (!this.stored && body.version !== 0) throw new ApiError(404, "not_found", "canvas does not exist (deleted?); save with version 0");
    if (body.version !== version) {
      throw new ApiError(409, "version_conflict", "stale", { error: { code: "version_conflict", message: "stale", current: structuredClone(this.stored ?? undefined) } });
    }
    this.stored = canvas(version + 1, { name: body.name ?? null, viewport: body.viewport ?? emptyDoc().viewport, nodes: body.nodes, edges: body.edges });
    return structuredClone(this.stored);
  }

  /** Another view saves. */
  saveElsewhere(d: CanvasDoc): number {
    this.stored = canvas((this.stored?.version ?? 0) + 1, d);
    return this.stored.version;
  }
}

class Holder implements DocHolder {
  doc: CanvasDoc = emptyDoc();
  applied: string[] = [];
  getDoc(): CanvasDoc {
    return this.doc;
  }
  applyDoc(d: CanvasDoc, origin: "load" | "merge"): void {
    this.doc = d;
    this.applied.push(origin);
  }
}

const deps = { setTimeout: (fn: () => void, ms: number) => setTimeout(fn, ms), clearTimeout: (h: unknown) => clearTimeout(h as ReturnType<typeof setTimeout>) };

describe("a stored canvas", () => {
  it("gets the default viewport when it has none (made from Python: {})", () => {
    const c = { ...canvas(1, doc([])), viewport: {} as never };
    expect(docFromCanvas(c).viewport).toEqual({ x: 0, y: 0, zoom: 1 });
  });
});

describe("three-way merge", () => {
  it("keeps both views' edits to different nodes and fields", () => {
    const base = doc([node("a", { prompt: "fox", seed: 1 }), node("b", { prompt: "owl" })]);
    const local = doc([node("a", { prompt: "red fox", seed: 1 }), node("b", { prompt: "owl" }), node("c")]);
    const remote = doc([node("a", { prompt: "fox", seed: 2 }, 50), node("b", { prompt: "owl" })]);
    const merged = mergeDocs(base, local, remote);
    expect(merged.nodes.map((n) => n.id)).toEqual(["a", "b", "c"]);
    expect(merged.nodes[0]).toMatchObject({ position_x: 50, data: { prompt: "red fox", seed: 2 } });
  });

  it("drops what this view deleted and keeps what the other added", () => {
    const base = doc([node("a"), node("b")], [edge("e1", "a", "b")]);
    const local = doc([node("a")]);
    const remote = doc([node("a"), node("b"), node("d")], [edge("e1", "a", "b"), edge("e2", "a", "d")]);
    const merged = mergeDocs(base, local, remote);
    expect(merged.nodes.map((n) => n.id)).toEqual(["a", "d"]);
    expect(merged.edges.map((e) => e.id)).toEqual(["e2"]);
  });

  it("keeps a node this view edited while the other deleted it, and drops edges to deleted nodes", () => {
    const base = doc([node("a", { prompt: "x" }), node("b")], []);
    const local = doc([node("a", { prompt: "y" }), node("b")], [edge("e1", "b", "a")]);
    const remote = doc([]);
    const merged = mergeDocs(base, local, remote);
    expect(merged.nodes.map((n) => n.id)).toEqual(["a"]);
    expect(merged.edges).toEqual([]);
  });
});

describe("saving a canvas", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("saves a burst of edits once, debounced, and creates the canvas at version 0", async () => {
    const server = new FakeCanvasServer();
    const holder = new Holder();
    const sync = new CanvasSync("c1", server, holder, deps, { debounceMs: 250, maxWaitMs: 1000 });
    await sync.load();
    for (let i = 0; i < 5; i += 1) {
      holder.doc = doc([node("a", { prompt: "fox".slice(0, i) })]);
      sync.changed();
      await vi.advanceTimersByTimeAsync(100);
    }
    expect(server.puts).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(300);
    expect(server.puts).toHaveLength(1);
    expect(server.puts[0]?.version).toBe(0);
    expect(sync.version).toBe(1);
    expect(sync.state).toBe("saved");
  });

  it("saves at least every maxWait during a long burst", async () => {
    const server = new FakeCanvasServer();
    const holder = new Holder();
    const sync = new CanvasSync("c1", server, holder, deps, { debounceMs: 250, maxWaitMs: 1000 });
    await sync.load();
    for (let i = 0; i < 15; i += 1) {
      holder.doc = doc([node("a", { n: i })]);
      sync.changed();
      await vi.advanceTimersByTimeAsync(100);
    }
    expect(server.puts.length).toBeGreaterThanOrEqual(1);
  });

  it("on 409 takes the server's canvas, re-applies its unsaved edits and saves again", async () => {
    const server = new FakeCanvasServer();
    server.saveElsewhere(doc([node("a", { prompt: "fox" }), node("b", { prompt: "owl" })]));
    const holder = new Holder();
    const sync = new CanvasSync("c1", server, holder, deps);
    await sync.load();
    expect(holder.applied).toEqual(["load"]);
    // Another view saves version 2 before this one saves its edit.
    server.saveElsewhere(doc([node("a", { prompt: "fox" }), node("b", { prompt: "snowy owl" })]));
    holder.doc = doc([node("a", { prompt: "red fox" }), node("b", { prompt: "owl" })]);
    await sync.flush();
    expect(server.puts.map((p) => p.version)).toEqual([1, 2]);
    expect(server.stored?.version).toBe(3);
    expect(server.stored?.nodes.map((n) => n.data["prompt"])).toEqual(["red fox", "snowy owl"]);
    expect(holder.doc.nodes.map((n) => n.data["prompt"])).toEqual(["red fox", "snowy owl"]);
    expect(sync.dirty).toBe(false);
  });

  it("reloads on a newer version saved elsewhere, and does not save back what it did not change", async () => {
    const server = new FakeCanvasServer();
    server.saveElsewhere(doc([node("a")]));
    const holder = new Holder();
    const sync = new CanvasSync("c1", server, holder, deps);
    await sync.load();
    const version = server.saveElsewhere(doc([node("a"), node("b")]));
    sync.remoteSaved(version);
    await vi.runAllTimersAsync();
    expect(holder.doc.nodes.map((n) => n.id)).toEqual(["a", "b"]);
    expect(sync.version).toBe(version);
    expect(server.puts).toHaveLength(0);
    sync.remoteSaved(version);
    await vi.runAllTimersAsync();
    expect(server.gets).toBe(2);
  });

  it("merges a newer version into unsaved edits and saves the result", async () => {
    const server = new FakeCanvasServer();
    server.saveElsewhere(doc([node("a")]));
    const holder = new Holder();
    const sync = new CanvasSync("c1", server, holder, deps, { debounceMs: 5000, maxWaitMs: 5000 });
    await sync.load();
    holder.doc = doc([node("a"), node("mine")]);
    sync.changed();
    const version = server.saveElsewhere(doc([node("a"), node("theirs")]));
    sync.remoteSaved(version);
    await vi.advanceTimersByTimeAsync(10);
    expect(holder.doc.nodes.map((n) => n.id)).toEqual(["a", "theirs", "mine"]);
    expect(server.stored?.nodes.map((n) => n.id)).toEqual(["a", "theirs", "mine"]);
  });

  it("flushes at once on close, never losing the last edit", async () => {
    const server = new FakeCanvasServer();
    const holder = new Holder();
    const sync = new CanvasSync("c1", server, holder, deps, { debounceMs: 5000, maxWaitMs: 5000 });
    await sync.load();
    holder.doc = doc([node("last")]);
    sync.changed();
    await sync.flush(true);
    expect(server.stored?.nodes.map((n) => n.id)).toEqual(["last"]);
  });

  it("saves a canvas deleted elsewhere as a new one rather than lose what this view shows", async () => {
    const server = new FakeCanvasServer();
    server.saveElsewhere(doc([node("a")]));
    const holder = new Holder();
    const sync = new CanvasSync("c1", server, holder, deps);
    await sync.load();
    server.stored = null;
    holder.doc = doc([node("a"), node("b")]);
    await sync.flush();
    expect(server.puts.map((p) => p.version)).toEqual([1, 0]);
    expect((server.stored as Canvas | null)?.nodes.map((n) => n.id)).toEqual(["a", "b"]);
  });

  it("retries a failed save with backoff and says it is not saved meanwhile", async () => {
    const server = new FakeCanvasServer();
    const holder = new Holder();
    const sync = new CanvasSync("c1", server, holder, deps, { debounceMs: 10, maxWaitMs: 10 });
    await sync.load();
    const save = server.saveCanvas.bind(server);
    let fail = true;
    server.saveCanvas = async (id, body) => {
      if (fail) throw new ApiError(503, "unavailable", "the database cannot be reached");
      return save(id, body);
    };
    holder.doc = doc([node("a")]);
    sync.changed();
    await vi.advanceTimersByTimeAsync(20);
    expect(sync.state).toBe("error");
    expect(sync.lastError).toContain("database");
    fail = false;
    await vi.advanceTimersByTimeAsync(1500);
    expect(sync.state).toBe("saved");
    expect(server.stored?.nodes).toHaveLength(1);
  });
});
