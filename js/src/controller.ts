// One canvas view's work: loading, the event stream, Generate/Cancel, history and saving, over one Transport.
import { ImagenApi } from "./api/client";
import { type GenerateAnswer, type GenerateGraph, type Health, type Job, type JobEvent, type StreamMessage, TERMINAL } from "./api/types";
import { imageTargets, isImageNode, isPromptNode, nodeById, uuidV4 } from "./state/graph";
import { generationGraph } from "./state/generate";
import { groupHistory, groupIndexOfJob, isActive } from "./state/history";
import {
  type CanvasStore,
  applyDoc,
  applyJobEvent,
  createCanvasStore,
  getDoc,
  setCurrentJob,
  setNodeError,
  setProviders,
  updateNodeData,
  upsertJobs,
} from "./state/store";
import { CanvasSync, type SyncDeps } from "./sync/canvas-sync";
import { ApiError, type Transport } from "./transport/transport";

/** How often running jobs are checked for silence, and how long a silence is before one is fetched. */
const WATCHDOG_MS = 5000;
const QUIET_MS = 10000;

export interface ControllerOptions {
  sync?: SyncDeps;
  debounceMs?: number;
}

export class CanvasController {
  readonly store: CanvasStore;
  readonly api: ImagenApi;
  readonly sync: CanvasSync;
  health: Health | null = null;

  private readonly eventCounts = new Map<string, number>();
  private readonly fetching = new Set<string>();
  private readonly createdHere = new Set<string>();
  private readonly unsubscribe: (() => void)[] = [];
  private readonly lastHeard = new Map<string, number>();
  private watchdog: ReturnType<typeof setInterval> | null = null;
  private wasOpen = false;
  private disposed = false;

  constructor(
    readonly transport: Transport,
    readonly canvasId: string,
    options: ControllerOptions = {},
  ) {
    this.store = createCanvasStore(canvasId);
    this.api = new ImagenApi(transport);
    const store = this.store;
    this.sync = new CanvasSync(
      canvasId,
      this.api,
      { getDoc: () => getDoc(store.getState()), applyDoc: (doc) => applyDoc(store, doc) },
      options.sync ?? { setTimeout: (fn, ms) => setTimeout(fn, ms), clearTimeout: (h) => clearTimeout(h as number) },
      { debounceMs: options.debounceMs ?? 250 },
    );
    this.store.setState({ transportKind: transport.kind, connection: transport.connection });
    this.unsubscribe.push(
      transport.subscribe((m) => this.receive(m)),
      transport.onConnection((state) => {
        this.store.setState({ connection: state });
        if (state === "open") {
          if (this.wasOpen) this.refreshActive();
          this.wasOpen = true;
        }
      }),
      this.store.subscribe((s, prev) => {
        if (s.docRevision !== prev.docRevision) this.sync.changed();
      }),
      this.sync.states.add((state) => this.store.setState({ syncState: state, syncError: this.sync.lastError })),
    );
    if (transport.connection === "open") this.wasOpen = true;
    this.watchdog = setInterval(() => this.checkQuiet(), WATCHDOG_MS);
  }

  /**
   * A job still running with no word for a while is fetched: the stream resumes after drops, but a kernel
   * that stopped forwarding (restarted, busy) or a lost message must not leave a node spinning forever.
   */
  private checkQuiet(now = Date.now()): void {
    for (const job of Object.values(this.store.getState().jobs)) {
      if (!isActive(job)) continue;
      const heard = this.lastHeard.get(job.id);
      if (heard === undefined) this.lastHeard.set(job.id, now);
      else if (now - heard > QUIET_MS) {
        this.lastHeard.set(job.id, now);
        this.fetchJob(job.id);
      }
    }
  }

  /** Load providers, health, the canvas and its jobs; `status` says what is missing when something is. */
  async start(): Promise<string> {
    const [health, providers, loaded, jobs] = await Promise.allSettled([
      this.api.health(),
      this.api.providers(),
      this.sync.load(),
      this.api.canvasJobs(this.canvasId),
    ]);
    if (this.disposed) return "closed";
    if (health.status === "fulfilled") {
      this.health = health.value;
      this.transport.setStorageOrigin(health.value.storage_origin ?? null);
    }
    if (providers.status === "fulfilled") {
      setProviders(this.store, providers.value);
      // Nodes loaded before the providers came keep their stored provider; only new nodes take the default.
    }
    if (jobs.status === "fulfilled") upsertJobs(this.store, jobs.value);
    const failed = [health, providers, loaded, jobs].find((r) => r.status === "rejected") as PromiseRejectedResult | undefined;
    let status = "ready";
    if (health.status === "fulfilled" && health.value.error) status = `database unavailable: ${health.value.error}`;
    else if (failed) status = describeFailure(failed.reason);
    const ready = status === "ready" || loaded.status === "fulfilled";
    this.store.setState({ phase: ready ? "ready" : "unavailable", statusMessage: status === "ready" ? null : status });
    return status;
  }

  private receive(message: StreamMessage): void {
    if (this.disposed) return;
    switch (message.kind) {
      case "hello":
        return;
      case "canvas":
        if (message.canvas_id === this.canvasId) this.sync.remoteSaved(message.version);
        return;
      case "workers":
        for (const job of Object.values(this.store.getState().jobs)) if (job.status === "pending") this.fetchJob(job.id);
        return;
      case "reset":
        void this.reloadJobs();
        this.sync.remoteSaved(Number.MAX_SAFE_INTEGER);
        return;
      case "notice":
        this.store.setState({ notice: typeof message.message === "string" ? message.message : null });
        return;
      default:
        if ("job_id" in message) this.receiveJobEvent(message);
    }
  }

  private receiveJobEvent(event: JobEvent): void {
    const outcome = applyJobEvent(this.store, event);
    if (outcome === "ignored") return;
    this.eventCounts.set(event.job_id, (this.eventCounts.get(event.job_id) ?? 0) + 1);
    this.lastHeard.set(event.job_id, Date.now());
    const terminal = event.kind === "state" && event.status !== null && TERMINAL.has(event.status);
    if (outcome === "new" || terminal) this.fetchJob(event.job_id, outcome === "new");
  }

  /** Fetch one job (its image, times and cost); a job new to this view may become its node's current one. */
  fetchJob(id: string, adopt = false): void {
    if (this.fetching.has(id)) return;
    this.fetching.add(id);
    const before = this.eventCounts.get(id) ?? 0;
    this.api
      .job(id)
      .then((job) => {
        upsertJobs(this.store, [job], () => (this.eventCounts.get(id) ?? 0) !== before);
        if (adopt && !this.createdHere.has(id)) this.adopt(job);
      })
      .catch(() => undefined)
      .finally(() => this.fetching.delete(id));
  }

  /** A generation made elsewhere (the notebook API, another view) shows on its node when it is the newest. */
  private adopt(job: Job): void {
    if (!job.node_id) return;
    const state = this.store.getState();
    const node = nodeById(state.nodes, job.node_id);
    if (!isImageNode(node)) return;
    const current = node.data.current_job_id ? state.jobs[node.data.current_job_id] : undefined;
    if (current && (current.created_at >= job.created_at || (job.group_id !== null && current.group_id === job.group_id))) return;
    setCurrentJob(this.store, node.id, job.id);
  }

  private refreshActive(): void {
    for (const job of Object.values(this.store.getState().jobs)) if (isActive(job)) this.fetchJob(job.id);
  }

  private async reloadJobs(): Promise<void> {
    try {
      upsertJobs(this.store, await this.api.canvasJobs(this.canvasId));
    } catch {
      // The next event or reconnect tries again.
    }
  }

  /** The whole history of one node (the start-up load may have stopped at its page limit). */
  async loadNodeHistory(nodeId: string): Promise<void> {
    try {
      upsertJobs(this.store, await this.api.canvasJobs(this.canvasId, nodeId));
    } catch {
      // History shows what the store has.
    }
  }

  /**
   * Generate: one request, in which the server builds and queues `variants` jobs of one new group for an image
   * node from the graph as this view holds it; a prompt node runs every image node it feeds. While the request
   * is out the node shows pending; a refusal (no prompt, nothing to refine from yet, a 400 naming a field) is
   * said on the node.
   */
  async generate(nodeId: string): Promise<void> {
    const state = this.store.getState();
    const node = nodeById(state.nodes, nodeId);
    if (isPromptNode(node)) {
      const targets = imageTargets(state.nodes, state.edges, nodeId);
      if (!targets.length) {
        setNodeError(this.store, nodeId, "Connect this prompt to an image node to run it.");
        return;
      }
      setNodeError(this.store, nodeId, null);
      await Promise.all(targets.map((t) => this.generate(t.id)));
      return;
    }
    if (!isImageNode(node) || state.submitting[nodeId]) return;
    if (node.data.seed_locked && node.data.seed === null) {
      updateNodeData(this.store, nodeId, { seed: Math.floor(Math.random() * 2 ** 31) });
    }
    setNodeError(this.store, nodeId, null);
    this.store.setState((s) => ({ submitting: { ...s.submitting, [nodeId]: true } }));
    try {
      // A job names its canvas, which must be stored first (a new canvas's first save is still debounced).
      // Unsaved edits need no save first: the request carries the node and its inputs as this view has them.
      if (this.sync.version === 0) await this.sync.flush().catch(() => undefined);
      const now = this.store.getState();
      const graph = generationGraph(now.nodes, now.edges, nodeId);
      if (!graph) return;
      const { jobs } = await this.submit(nodeId, graph, uuidV4());
      for (const job of jobs) {
        this.createdHere.add(job.id);
        this.lastHeard.set(job.id, Date.now());
      }
      // Its first events may have come before the POST's answer: those are newer than the answer.
      upsertJobs(this.store, jobs, (id) => this.eventCounts.has(id));
      const first = jobs[0];
      if (first) setCurrentJob(this.store, nodeId, first.id);
    } catch (err) {
      setNodeError(this.store, nodeId, describeFailure(err));
    } finally {
      this.store.setState((s) => {
        const submitting = { ...s.submitting };
        delete submitting[nodeId];
        return { submitting };
      });
    }
  }

  /** One Generate request; a network failure is retried once with the same Idempotency-Key (never twice the jobs). */
  private async submit(nodeId: string, graph: GenerateGraph, key: string): Promise<GenerateAnswer> {
    try {
      return await this.api.generateNode(this.canvasId, nodeId, graph, key);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 0) throw err;
      await new Promise((r) => setTimeout(r, 1000));
      return this.api.generateNode(this.canvasId, nodeId, graph, key);
    }
  }

  /** Cancel the running or pending jobs of the generation a node shows. */
  async cancel(nodeId: string): Promise<void> {
    const state = this.store.getState();
    const node = nodeById(state.nodes, nodeId);
    if (!isImageNode(node)) return;
    const groups = groupHistory(state.nodeJobs[nodeId] ?? []);
    const viewing = state.viewing[nodeId];
    const group = viewing ? groups.find((g) => g.key === viewing) : groups[groupIndexOfJob(groups, node.data.current_job_id)];
    const active = group?.jobs.filter(isActive) ?? [];
    const results = await Promise.allSettled(active.map((job) => this.api.cancelJob(job.id)));
    const jobs = results.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    upsertJobs(this.store, jobs);
    const failure = results.find((r) => r.status === "rejected") as PromiseRejectedResult | undefined;
    if (failure) setNodeError(this.store, nodeId, describeFailure(failure.reason));
  }

  /** Save what is unsaved, then let go of the transport (the view is gone). */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    if (this.watchdog !== null) clearInterval(this.watchdog);
    for (const off of this.unsubscribe) off();
    try {
      await Promise.race([this.sync.flush(), new Promise((r) => setTimeout(r, 5000))]);
    } catch {
      // Nothing more can be done for a closing view.
    }
    this.sync.close();
  }
}

export function describeFailure(reason: unknown): string {
  if (reason instanceof ApiError) {
    if (reason.code === "too_many_pending") {
      const after = reason.body?.error.retry_after;
      return `${reason.message}${after ? ` (try again in ${after} s)` : ""}`;
    }
    return reason.message;
  }
  return reason instanceof Error ? reason.message : String(reason);
}
