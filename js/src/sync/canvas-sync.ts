// Debounced, versioned canvas saves (PUT canvases/{id}); 409 and newer versions elsewhere are merged, not lost.
import type { Canvas, CanvasPut } from "../api/types";
import { ApiError, Listeners } from "../transport/transport";
import { type CanvasDoc, docFromCanvas, docsEqual, emptyDoc } from "./doc";
import { mergeDocs } from "./merge";

export interface SyncApi {
  canvas(id: string): Promise<Canvas>;
  saveCanvas(id: string, body: CanvasPut, keepalive?: boolean): Promise<Canvas>;
}

/** The canvas as the view holds it: read for a save, replaced by a load or a merge. */
export interface DocHolder {
  getDoc(): CanvasDoc;
  /** Replace the view's canvas by `doc` (a load or a merge): not an undo step. */
  applyDoc(doc: CanvasDoc, origin: "load" | "merge"): void;
}

export interface SyncDeps {
  setTimeout: (fn: () => void, ms: number) => unknown;
  clearTimeout: (handle: unknown) => void;
}

export interface SyncOptions {
  debounceMs?: number;
  /** A burst of edits is saved at least this often. */
  maxWaitMs?: number;
}

export type SyncState = "loading" | "saved" | "pending" | "saving" | "error";

const MAX_ROUNDS = 8;
const RETRY_MS = [1000, 2000, 5000, 10000];

export class CanvasSync {
  /** The stored version `base` is at. */
  version = 0;
  /** The canvas as the server has it at `version` (what local edits are measured against). */
  base: CanvasDoc = emptyDoc();
  state: SyncState = "loading";
  lastError: string | null = null;
  readonly states = new Listeners<SyncState>();

  private chain: Promise<void> = Promise.resolve();
  private timer: unknown = null;
  private firstChangeAt: number | null = null;
  private saveQueued = false;
  private pullQueued = false;
  private remoteVersion = 0;
  private failures = 0;
  private loaded = false;
  private closed = false;
  private readonly debounceMs: number;
  private readonly maxWaitMs: number;

  constructor(
    readonly canvasId: string,
    private readonly api: SyncApi,
    private readonly holder: DocHolder,
    private readonly deps: SyncDeps,
    options: SyncOptions = {},
  ) {
    this.debounceMs = options.debounceMs ?? 250;
    this.maxWaitMs = options.maxWaitMs ?? 1000;
  }

  /** Load the stored canvas (a canvas not stored yet is empty at version 0). */
  load(): Promise<void> {
    return this.enqueue(async () => {
      let canvas: Canvas | null = null;
      try {
        canvas = await this.api.canvas(this.canvasId);
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 404)) {
          this.setState("error", errorText(err));
          throw err;
        }
      }
      this.loaded = true;
      if (canvas) {
        this.version = canvas.version;
        this.base = docFromCanvas(canvas);
        this.holder.applyDoc(this.base, "load");
      } else {
        this.version = 0;
        this.base = emptyDoc();
        // Whatever the view already holds (nodes added before the load finished) is saved as the first version.
      }
      this.setState(docsEqual(this.holder.getDoc(), this.base) ? "saved" : "pending");
      if (this.state === "pending") this.schedule();
    });
  }

  /** The view's canvas changed: save soon. */
  changed(now = Date.now()): void {
    if (this.closed || !this.loaded) return;
    if (this.firstChangeAt === null) this.firstChangeAt = now;
    if (this.state === "saved" || this.state === "error") this.setState("pending");
    this.schedule(now);
  }

  /** Some view saved version `version` (a `canvas` event): fetch and merge it if it is newer than ours. */
  remoteSaved(version: number): void {
    if (this.closed || !this.loaded) return;
    this.remoteVersion = Math.max(this.remoteVersion, version);
    if (version <= this.version || this.pullQueued) return;
    this.pullQueued = true;
    void this.enqueue(() => this.pull()).catch(() => undefined);
  }

  /** Save now whatever is unsaved (page unload, view disposed); resolves when the server has it. */
  flush(keepalive = false): Promise<void> {
    if (this.timer !== null) this.deps.clearTimeout(this.timer);
    this.timer = null;
    if (!this.loaded) return this.chain;
    return this.queueSave(keepalive);
  }

  get dirty(): boolean {
    return this.loaded && !docsEqual(this.holder.getDoc(), this.base);
  }

  close(): void {
    this.closed = true;
    if (this.timer !== null) this.deps.clearTimeout(this.timer);
    this.timer = null;
  }

  private schedule(now = Date.now()): void {
    if (this.timer !== null) this.deps.clearTimeout(this.timer);
    const waited = this.firstChangeAt === null ? 0 : now - this.firstChangeAt;
    const delay = Math.max(0, Math.min(this.debounceMs, this.maxWaitMs - waited));
    this.timer = this.deps.setTimeout(() => {
      this.timer = null;
      void this.queueSave(false).catch(() => undefined);
    }, delay);
  }

  private queueSave(keepalive: boolean): Promise<void> {
    if (this.saveQueued && !keepalive) return this.chain;
    this.saveQueued = true;
    return this.enqueue(async () => {
      this.saveQueued = false;
      await this.save(keepalive);
    });
  }

  private enqueue(task: () => Promise<void>): Promise<void> {
    const run = this.chain.then(task, task);
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async save(keepalive: boolean): Promise<void> {
    this.firstChangeAt = null;
    for (let round = 0; round < MAX_ROUNDS; round += 1) {
      const doc = this.holder.getDoc();
      if (docsEqual(doc, this.base)) {
        this.failures = 0;
        this.setState("saved");
        return;
      }
      this.setState("saving");
      const body: CanvasPut = { version: this.version, viewport: doc.viewport, nodes: doc.nodes, edges: doc.edges };
      if (doc.name !== null) body.name = doc.name;
      try {
        const saved = await this.api.saveCanvas(this.canvasId, body, keepalive);
        this.version = saved.version;
        this.base = doc;
        this.failures = 0;
      } catch (err) {
        const current = err instanceof ApiError && err.status === 409 ? err.body?.error.current : undefined;
        if (current) {
          this.rebase(current);
          continue;
        }
        if (err instanceof ApiError && err.status === 404 && this.version > 0) {
          // Deleted elsewhere while this view still edits it: what the view shows is saved as a new canvas.
          this.version = 0;
          this.base = emptyDoc();
          continue;
        }
        this.failures += 1;
        this.setState("error", errorText(err));
        if (!this.closed) {
          const delay = RETRY_MS[Math.min(this.failures - 1, RETRY_MS.length - 1)] ?? 10000;
          if (this.timer !== null) this.deps.clearTimeout(this.timer);
          this.timer = this.deps.setTimeout(() => {
            this.timer = null;
            void this.queueSave(false).catch(() => undefined);
          }, delay);
        }
        throw err;
      }
    }
    this.setState(this.dirty ? "pending" : "saved");
    if (this.dirty) this.schedule();
  }

  private async pull(): Promise<void> {
    this.pullQueued = false;
    if (this.remoteVersion <= this.version) return;
    let canvas: Canvas;
    try {
      canvas = await this.api.canvas(this.canvasId);
    } catch (err) {
      this.lastError = errorText(err);
      return;
    }
    if (canvas.version <= this.version) return;
    const unsaved = this.dirty;
    this.rebase(canvas);
    if (unsaved) await this.save(false);
  }

  /** Take the server's canvas as the new base and re-apply what this view changed since the old one. */
  private rebase(current: Canvas): void {
    const remote = docFromCanvas(current);
    const local = this.holder.getDoc();
    const merged = docsEqual(local, this.base) ? remote : mergeDocs(this.base, local, remote);
    this.version = current.version;
    this.base = remote;
    this.holder.applyDoc(merged, "merge");
  }

  private setState(state: SyncState, error: string | null = null): void {
    this.lastError = error;
    if (this.state === state) return;
    this.state = state;
    this.states.emit(state);
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
