// The one store of a canvas view: graph (undoable), jobs by node, providers, and UI-only state.
import { applyNodeChanges, type EdgeChange, type NodeChange, type Connection } from "@xyflow/react";
import { createStore, type StoreApi } from "zustand/vanilla";
import type { Job, JobEvent, Provider, ProvidersAnswer, Viewport, ImageNodeData, PromptNodeData } from "../api/types";
import type { ConnectionState, TransportKind } from "../transport/transport";
import type { SyncState } from "../sync/canvas-sync";
import { type CanvasDoc, DEFAULT_VIEWPORT, jsonEqual, toCanvasEdge, toCanvasNode, toFlowEdge } from "../sync/doc";
import {
  type FlowEdge,
  type FlowNode,
  canConnect,
  defaultImageData,
  defaultPromptData,
  isImageNode,
  newId,
  nodeById,
  normalizeImageData,
  normalizePromptData,
} from "./graph";
import { sortJobs } from "./history";
import { applyEvent, mergeFetched, placeholderJob } from "./jobs";
import { type UndoStacks, keepLiveFields, record, redo as redoStep, undo as undoStep } from "./undo";

export type Phase = "starting" | "ready" | "unavailable";

export interface LightboxState {
  nodeId: string;
  jobId: string;
}

export interface CompareState {
  nodeId: string;
  a: string;
  b: string;
  mode: "slider" | "side";
}

export interface CanvasState {
  canvasId: string;
  name: string | null;
  nodes: FlowNode[];
  edges: FlowEdge[];
  /** The viewport as last reported by React Flow (saved with the canvas; a remote one never moves the view). */
  viewport: Viewport;
  /** Bumped by every local edit of what is saved. */
  docRevision: number;
  undo: UndoStacks;

  jobs: Record<string, Job>;
  /** Each node's jobs, oldest first (one array per node, replaced only when that node's jobs change). */
  nodeJobs: Record<string, Job[]>;
  /** The latest progress `message` of a running job. */
  jobMessages: Record<string, string>;
  /** A Generate refused before any job was made (no prompt, a 400 naming a field). */
  nodeErrors: Record<string, string>;
  submitting: Record<string, boolean>;

  providers: Provider[];
  defaultProvider: string;

  /** The history group a node shows, when not the current one (UI only, never saved). */
  viewing: Record<string, string>;
  lightbox: LightboxState | null;
  compare: CompareState | null;

  phase: Phase;
  statusMessage: string | null;
  /** The latest notice from the kernel transport (shown for a few seconds). */
  notice: string | null;
  transportKind: TransportKind | null;
  connection: ConnectionState;
  syncState: SyncState;
  syncError: string | null;
}

export type CanvasStore = StoreApi<CanvasState>;

export function createCanvasStore(canvasId: string): CanvasStore {
  return createStore<CanvasState>(() => ({
    canvasId,
    name: null,
    nodes: [],
    edges: [],
    viewport: DEFAULT_VIEWPORT,
    docRevision: 0,
    undo: { past: [], future: [] },
    jobs: {},
    nodeJobs: {},
    jobMessages: {},
    nodeErrors: {},
    submitting: {},
    providers: [],
    defaultProvider: "local",
    viewing: {},
    lightbox: null,
    compare: null,
    phase: "starting",
    statusMessage: null,
    notice: null,
    transportKind: null,
    connection: "connecting",
    syncState: "loading",
    syncError: null,
  }));
}

// ---- the saved document -------------------------------------------------------------------------------

export function getDoc(state: CanvasState): CanvasDoc {
  return {
    name: state.name,
    viewport: state.viewport,
    nodes: state.nodes.map(toCanvasNode),
    edges: state.edges.map(toCanvasEdge),
  };
}

function defaults(state: CanvasState): { provider: string; model: string } {
  const provider = state.providers.find((p) => p.name === state.defaultProvider) ?? state.providers[0];
  return { provider: provider?.name ?? state.defaultProvider, model: provider?.default_model ?? provider?.models[0]?.model ?? "" };
}

/**
 * Replace the graph by a loaded or merged document. Nodes that did not change keep their object (so React
 * Flow re-renders nothing for them) and their UI state (selection, measured size).
 */
export function applyDoc(store: CanvasStore, doc: CanvasDoc): void {
  const state = store.getState();
  const { provider, model } = defaults(state);
  const nodes: FlowNode[] = doc.nodes
    .filter((n) => n.type === "prompt" || n.type === "image")
    .map((n) => {
      const prev = nodeById(state.nodes, n.id);
      const data = n.type === "prompt" ? normalizePromptData(n.data ?? {}) : normalizeImageData(n.data ?? {}, provider, model);
      const position = { x: n.position_x, y: n.position_y };
      if (prev && prev.type === n.type && jsonEqual(prev.data, data) && prev.position.x === position.x && prev.position.y === position.y) {
        return prev;
      }
      return {
        ...(prev ?? {}),
        id: n.id,
        type: n.type,
        position,
        data,
      } as FlowNode;
    });
  const prevEdges = new Map(state.edges.map((e) => [e.id, e]));
  const edges = doc.edges.map((e) => {
    const prev = prevEdges.get(e.id);
    const next = toFlowEdge(e);
    return prev && prev.source === next.source && prev.target === next.target ? prev : next;
  });
  store.setState({ nodes, edges, name: doc.name, viewport: doc.viewport });
}

// ---- graph edits (undoable) ---------------------------------------------------------------------------

interface EditMeta {
  dragKey: string | null;
  dragSeq: number;
  batch: number;
  batchScheduled: boolean;
}

const metas = new WeakMap<CanvasStore, EditMeta>();

function meta(store: CanvasStore): EditMeta {
  let m = metas.get(store);
  if (!m) {
    m = { dragKey: null, dragSeq: 0, batch: 0, batchScheduled: false };
    metas.set(store, m);
  }
  return m;
}

/** A key shared by every edit made in the same task (React Flow deletes nodes and their edges in two calls). */
function batchKey(store: CanvasStore, prefix: string): string {
  const m = meta(store);
  if (!m.batchScheduled) {
    m.batchScheduled = true;
    queueMicrotask(() => {
      m.batch += 1;
      m.batchScheduled = false;
    });
  }
  return `${prefix}:${m.batch}`;
}

/** Apply a graph edit as one undo step (or part of the step `key` names). */
export function edit(
  store: CanvasStore,
  key: string | null,
  change: (state: CanvasState) => Partial<Pick<CanvasState, "nodes" | "edges">> | null,
  now = Date.now(),
): void {
  const state = store.getState();
  const next = change(state);
  if (!next) return;
  const nodes = next.nodes ?? state.nodes;
  const edges = next.edges ?? state.edges;
  if (nodes === state.nodes && edges === state.edges) return;
  store.setState({
    nodes,
    edges,
    undo: record(state.undo, { nodes: state.nodes, edges: state.edges }, key, now),
    docRevision: state.docRevision + 1,
  });
}

export function onNodesChange(store: CanvasStore, changes: NodeChange<FlowNode>[]): void {
  const m = meta(store);
  const isDoc = (c: NodeChange<FlowNode>) => c.type === "position" || c.type === "remove" || c.type === "add" || c.type === "replace";
  const docChanges = changes.filter(isDoc);
  const uiChanges = changes.filter((c) => !isDoc(c));
  if (uiChanges.length) {
    store.setState((s) => ({ nodes: applyNodeChanges(uiChanges, s.nodes) }));
  }
  if (!docChanges.length) return;
  const moves = docChanges.filter((c) => c.type === "position");
  const removes = docChanges.filter((c) => c.type === "remove");
  if (moves.length) {
    const dragging = moves.some((c) => c.type === "position" && c.dragging);
    if (dragging && m.dragKey === null) {
      m.dragSeq += 1;
      m.dragKey = `drag:${m.dragSeq}`;
    }
    const key = m.dragKey ?? batchKey(store, "move");
    const moved = moves.some((c) => c.type === "position" && c.position);
    if (moved) edit(store, key, (s) => ({ nodes: applyNodeChanges(moves, s.nodes) }));
    if (!dragging) m.dragKey = null;
  }
  if (removes.length) {
    const ids = new Set(removes.map((c) => (c as { id: string }).id));
    edit(store, batchKey(store, "remove"), (s) => ({
      nodes: s.nodes.filter((n) => !ids.has(n.id)),
      edges: s.edges.filter((e) => !ids.has(e.source) && !ids.has(e.target)),
    }));
  }
  const others = docChanges.filter((c) => c.type === "add" || c.type === "replace");
  if (others.length) edit(store, null, (s) => ({ nodes: applyNodeChanges(others, s.nodes) }));
}

export function onEdgesChange(store: CanvasStore, changes: EdgeChange<FlowEdge>[]): void {
  const removes = new Set(changes.filter((c) => c.type === "remove").map((c) => (c as { id: string }).id));
  const selects = changes.filter((c) => c.type === "select");
  if (selects.length) {
    const selected = new Map(selects.map((c) => [(c as { id: string }).id, (c as { selected: boolean }).selected]));
    store.setState((s) => ({
      edges: s.edges.map((e) => (selected.has(e.id) && e.selected !== selected.get(e.id) ? { ...e, selected: selected.get(e.id) as boolean } : e)),
    }));
  }
  if (removes.size) {
    edit(store, batchKey(store, "remove"), (s) => ({ edges: s.edges.filter((e) => !removes.has(e.id)) }));
  }
}

/** Connect two nodes where the edge rules allow; an image node refines from one image at a time. */
export function connect(store: CanvasStore, connection: Connection): boolean {
  const state = store.getState();
  const { source, target } = connection;
  if (!source || !target || !canConnect(state.nodes, state.edges, source, target)) return false;
  const fromImage = isImageNode(nodeById(state.nodes, source));
  edit(store, null, (s) => {
    const kept = fromImage
      ? s.edges.filter((e) => !(e.target === target && isImageNode(nodeById(s.nodes, e.source))))
      : s.edges;
    return {
      edges: [
        ...kept,
        { id: newId("e"), source, target, sourceHandle: connection.sourceHandle ?? null, targetHandle: connection.targetHandle ?? null },
      ],
    };
  });
  return true;
}

export function addPromptNode(store: CanvasStore, position: { x: number; y: number }, data?: Partial<PromptNodeData>): string {
  const id = newId("prompt");
  edit(store, null, (s) => ({
    nodes: [...s.nodes.map(deselect), { id, type: "prompt", position, selected: true, data: { ...defaultPromptData(), ...data } }],
  }));
  return id;
}

export function addImageNode(
  store: CanvasStore,
  position: { x: number; y: number },
  data?: Partial<ImageNodeData>,
  refineFrom?: string,
): string {
  const id = newId("image");
  edit(store, null, (s) => {
    const { provider, model } = defaults(s);
    const node: FlowNode = { id, type: "image", position, selected: true, data: { ...defaultImageData(provider, model), ...data } };
    const edges = refineFrom
      ? [...s.edges, { id: newId("e"), source: refineFrom, target: id, sourceHandle: null, targetHandle: null }]
      : s.edges;
    return { nodes: [...s.nodes.map(deselect), node], edges };
  });
  return id;
}

function deselect(node: FlowNode): FlowNode {
  return node.selected ? { ...node, selected: false } : node;
}

/** Edit a node's data; edits of the same fields of the same node in a burst are one undo step. */
export function updateNodeData(store: CanvasStore, id: string, patch: Record<string, unknown>, now = Date.now()): void {
  const key = `data:${id}:${Object.keys(patch).sort().join(",")}`;
  edit(
    store,
    key,
    (s) => {
      const node = nodeById(s.nodes, id);
      if (!node) return null;
      const data = { ...node.data, ...patch } as Record<string, unknown>;
      if (jsonEqual(data, node.data)) return null;
      return { nodes: s.nodes.map((n) => (n.id === id ? ({ ...n, data } as FlowNode) : n)) };
    },
    now,
  );
}

/** Set which generation a node shows (not an undo step: results are not graph edits). */
export function setCurrentJob(store: CanvasStore, nodeId: string, jobId: string | null): void {
  const state = store.getState();
  const node = nodeById(state.nodes, nodeId);
  if (!isImageNode(node) || node.data.current_job_id === jobId) return;
  const viewing = { ...state.viewing };
  delete viewing[nodeId];
  store.setState({
    nodes: state.nodes.map((n) => (n.id === nodeId ? ({ ...n, data: { ...n.data, current_job_id: jobId } } as FlowNode) : n)),
    viewing,
    docRevision: state.docRevision + 1,
  });
}

export function deleteNodes(store: CanvasStore, ids: readonly string[]): void {
  const gone = new Set(ids);
  if (!gone.size) return;
  edit(store, null, (s) => ({
    nodes: s.nodes.filter((n) => !gone.has(n.id)),
    edges: s.edges.filter((e) => !gone.has(e.source) && !gone.has(e.target)),
  }));
}

export interface Clip {
  nodes: FlowNode[];
  edges: FlowEdge[];
}

/** Copies of `clip`'s nodes (new ids, moved by `offset`, no result yet) and the edges between them. */
export function pasteClip(store: CanvasStore, clip: Clip, offset: { x: number; y: number }): string[] {
  if (!clip.nodes.length) return [];
  const ids = new Map(clip.nodes.map((n) => [n.id, newId(n.type)]));
  const copies = clip.nodes.map((n) => {
    const data = n.type === "image" ? { ...n.data, current_job_id: null } : { ...n.data };
    return {
      id: ids.get(n.id) as string,
      type: n.type,
      position: { x: n.position.x + offset.x, y: n.position.y + offset.y },
      data,
      selected: true,
    } as FlowNode;
  });
  const edges = clip.edges
    .filter((e) => ids.has(e.source) && ids.has(e.target))
    .map((e) => ({ ...e, id: newId("e"), source: ids.get(e.source) as string, target: ids.get(e.target) as string, selected: false }));
  edit(store, null, (s) => ({ nodes: [...s.nodes.map(deselect), ...copies], edges: [...s.edges, ...edges] }));
  return copies.map((c) => c.id);
}

export function selectionClip(state: CanvasState): Clip {
  const nodes = state.nodes.filter((n) => n.selected);
  const ids = new Set(nodes.map((n) => n.id));
  return { nodes, edges: state.edges.filter((e) => ids.has(e.source) && ids.has(e.target)) };
}

export function undo(store: CanvasStore, now = Date.now()): boolean {
  const state = store.getState();
  const step = undoStep(state.undo, { nodes: state.nodes, edges: state.edges }, now);
  if (!step) return false;
  store.setState({
    nodes: keepLiveFields(step.graph.nodes, state.nodes),
    edges: step.graph.edges,
    undo: step.stacks,
    docRevision: state.docRevision + 1,
  });
  return true;
}

export function redo(store: CanvasStore, now = Date.now()): boolean {
  const state = store.getState();
  const step = redoStep(state.undo, { nodes: state.nodes, edges: state.edges }, now);
  if (!step) return false;
  store.setState({
    nodes: keepLiveFields(step.graph.nodes, state.nodes),
    edges: step.graph.edges,
    undo: step.stacks,
    docRevision: state.docRevision + 1,
  });
  return true;
}

export function setViewport(store: CanvasStore, viewport: Viewport): void {
  const state = store.getState();
  if (jsonEqual(state.viewport, viewport)) return;
  store.setState({ viewport, docRevision: state.docRevision + 1 });
}

// ---- jobs -------------------------------------------------------------------------------------------------

function withJobs(state: CanvasState, updated: Job[]): Pick<CanvasState, "jobs" | "nodeJobs"> {
  const jobs = { ...state.jobs };
  const touched = new Map<string, Job[]>();
  for (const job of updated) {
    const before = jobs[job.id];
    jobs[job.id] = job;
    const nodeId = job.node_id;
    if (!nodeId) continue;
    let list = touched.get(nodeId) ?? state.nodeJobs[nodeId] ?? [];
    if (!touched.has(nodeId)) list = [...list];
    const i = before ? list.findIndex((j) => j.id === job.id) : -1;
    if (i >= 0) list[i] = job;
    else list.push(job);
    touched.set(nodeId, list);
  }
  if (!touched.size) return { jobs, nodeJobs: state.nodeJobs };
  const nodeJobs = { ...state.nodeJobs };
  for (const [nodeId, list] of touched) nodeJobs[nodeId] = sortJobs(list);
  return { jobs, nodeJobs };
}

/** Fetched jobs into the store; `eventsSince(id)` says whether events for it arrived since it was fetched. */
export function upsertJobs(store: CanvasStore, fetched: Job[], eventsSince: (id: string) => boolean = () => false): void {
  if (!fetched.length) return;
  const state = store.getState();
  const merged = fetched.map((job) => mergeFetched(state.jobs[job.id], job, eventsSince(job.id)));
  const changed = merged.filter((job) => job !== state.jobs[job.id]);
  if (changed.length) store.setState(withJobs(state, changed));
}

/** One stream event: returns whether the job is one the store had not seen (the caller fetches it). */
export function applyJobEvent(store: CanvasStore, event: JobEvent): "applied" | "new" | "ignored" {
  const state = store.getState();
  const known = state.jobs[event.job_id];
  if (!known && event.canvas_id !== state.canvasId) return "ignored";
  const job = known ? applyEvent(known, event) : placeholderJob(event);
  const patch: Partial<CanvasState> = {};
  if (job !== known) Object.assign(patch, withJobs(state, [job]));
  if (event.kind === "progress" && event.message) patch.jobMessages = { ...state.jobMessages, [event.job_id]: event.message };
  if (Object.keys(patch).length) store.setState(patch);
  return known ? "applied" : "new";
}

export function setProviders(store: CanvasStore, answer: ProvidersAnswer): void {
  store.setState({ providers: answer.providers, defaultProvider: answer.default_provider });
}

export function setNodeError(store: CanvasStore, nodeId: string, error: string | null): void {
  const state = store.getState();
  if ((state.nodeErrors[nodeId] ?? null) === error) return;
  const nodeErrors = { ...state.nodeErrors };
  if (error === null) delete nodeErrors[nodeId];
  else nodeErrors[nodeId] = error;
  store.setState({ nodeErrors });
}
