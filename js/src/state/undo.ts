// Undo/redo of graph edits: snapshots of nodes and edges, with a drag or a burst of typing merged into one step.
import type { FlowEdge, FlowNode } from "./graph";

export interface UndoEntry {
  nodes: FlowNode[];
  edges: FlowEdge[];
  /** Edits with the same key close together in time are one step (one field's typing, one drag). */
  key: string | null;
  at: number;
}

export interface UndoStacks {
  past: UndoEntry[];
  future: UndoEntry[];
}

/** Typing pauses longer than this start a new step. */
export const MERGE_WINDOW_MS = 1000;
export const MAX_STEPS = 200;

/**
 * The stacks after recording the graph as it is *before* an edit. `key` null never merges; a `drag:` key
 * merges for as long as the same drag lasts, any other key while its edits come within MERGE_WINDOW_MS.
 */
export function record(stacks: UndoStacks, before: { nodes: FlowNode[]; edges: FlowEdge[] }, key: string | null, now: number): UndoStacks {
  const top = stacks.past[stacks.past.length - 1];
  if (key !== null && top && top.key === key && (key.startsWith("drag:") || now - top.at <= MERGE_WINDOW_MS)) {
    const merged = { ...top, at: now };
    return { past: [...stacks.past.slice(0, -1), merged], future: [] };
  }
  const past = [...stacks.past, { nodes: before.nodes, edges: before.edges, key, at: now }];
  return { past: past.length > MAX_STEPS ? past.slice(past.length - MAX_STEPS) : past, future: [] };
}

/** The graph to show after undo (null when there is nothing to undo), and the new stacks. */
export function undo(stacks: UndoStacks, present: { nodes: FlowNode[]; edges: FlowEdge[] }, now: number): { stacks: UndoStacks; graph: { nodes: FlowNode[]; edges: FlowEdge[] } } | null {
  const top = stacks.past[stacks.past.length - 1];
  if (!top) return null;
  return {
    stacks: { past: stacks.past.slice(0, -1), future: [...stacks.future, { ...present, key: null, at: now }] },
    graph: { nodes: top.nodes, edges: top.edges },
  };
}

export function redo(stacks: UndoStacks, present: { nodes: FlowNode[]; edges: FlowEdge[] }, now: number): { stacks: UndoStacks; graph: { nodes: FlowNode[]; edges: FlowEdge[] } } | null {
  const top = stacks.future[stacks.future.length - 1];
  if (!top) return null;
  return {
    stacks: { past: [...stacks.past, { ...present, key: null, at: now }], future: stacks.future.slice(0, -1) },
    graph: { nodes: top.nodes, edges: top.edges },
  };
}

/**
 * Results are not graph edits: a node brought back by undo keeps the generation it shows now
 * (`current_job_id`), its size as measured and its selection state.
 */
export function keepLiveFields(restored: FlowNode[], present: readonly FlowNode[]): FlowNode[] {
  const byId = new Map(present.map((n) => [n.id, n]));
  return restored.map((node) => {
    const now = byId.get(node.id);
    if (!now) return node;
    let next = node;
    if (node.type === "image" && now.type === "image" && node.data.current_job_id !== now.data.current_job_id) {
      next = { ...node, data: { ...node.data, current_job_id: now.data.current_job_id } };
    }
    if (now.measured && next.measured !== now.measured) next = { ...next, measured: now.measured };
    return next;
  });
}
