// The saved part of a canvas (name, viewport, nodes, edges) in docs/api.md's shape, to and from React Flow's.
import type { Canvas, CanvasEdge, CanvasNode, Viewport } from "../api/types";
import type { FlowEdge, FlowNode } from "../state/graph";

export interface CanvasDoc {
  name: string | null;
  viewport: Viewport;
  nodes: CanvasNode[];
  edges: CanvasEdge[];
}

export const DEFAULT_VIEWPORT: Viewport = { x: 0, y: 0, zoom: 1 };

export function emptyDoc(): CanvasDoc {
  return { name: null, viewport: DEFAULT_VIEWPORT, nodes: [], edges: [] };
}

export function docFromCanvas(canvas: Canvas): CanvasDoc {
  return {
    name: canvas.name ?? null,
    viewport: normalizeViewport(canvas.viewport),
    nodes: Array.isArray(canvas.nodes) ? canvas.nodes : [],
    edges: Array.isArray(canvas.edges) ? canvas.edges : [],
  };
}

/** A stored viewport may be `{}` (a canvas made from Python): every field a finite number, else the default. */
export function normalizeViewport(raw: unknown): Viewport {
  const v = (raw ?? {}) as Partial<Record<keyof Viewport, unknown>>;
  const num = (x: unknown, d: number) => (typeof x === "number" && Number.isFinite(x) ? x : d);
  const zoom = num(v.zoom, 1);
  return { x: num(v.x, 0), y: num(v.y, 0), zoom: zoom > 0 ? zoom : 1 };
}

export function toCanvasNode(node: FlowNode): CanvasNode {
  return {
    id: node.id,
    type: node.type,
    position_x: node.position.x,
    position_y: node.position.y,
    data: node.data as Record<string, unknown>,
  };
}

export function toCanvasEdge(edge: FlowEdge): CanvasEdge {
  return {
    id: edge.id,
    source: edge.source,
    target: edge.target,
    source_handle: edge.sourceHandle ?? null,
    target_handle: edge.targetHandle ?? null,
  };
}

export function toFlowEdge(edge: CanvasEdge): FlowEdge {
  return {
    id: edge.id,
    source: edge.source,
    target: edge.target,
    sourceHandle: edge.source_handle,
    targetHandle: edge.target_handle,
  };
}

/** Structural equality of plain JSON values, key order ignored. */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== "object") return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    return a.every((v, i) => jsonEqual(v, b[i]));
  }
  if (Array.isArray(b)) return false;
  const ao = a as Record<string, unknown>;
  const bo = b as Record<string, unknown>;
  const keys = Object.keys(ao).filter((k) => ao[k] !== undefined);
  const bkeys = Object.keys(bo).filter((k) => bo[k] !== undefined);
  if (keys.length !== bkeys.length) return false;
  return keys.every((k) => jsonEqual(ao[k], bo[k]));
}

export function docsEqual(a: CanvasDoc | null, b: CanvasDoc | null): boolean {
  if (!a || !b) return a === b;
  return jsonEqual(a, b);
}
