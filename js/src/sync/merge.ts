// Three-way merge of a canvas: the local edits made since `base` re-applied on top of the server's `remote`.
import type { CanvasEdge, CanvasNode } from "../api/types";
import { type CanvasDoc, jsonEqual } from "./doc";

/**
 * Per node: untouched locally → the server's; added locally → ours; deleted locally → gone; changed
 * locally → the server's node with our changed fields (position, and each data key) on top, and back if
 * the server deleted it (an edit is never silently lost). Edges: added or deleted locally wins, others are
 * the server's; an edge whose ends are gone is dropped. The viewport is ours when we moved it.
 */
export function mergeDocs(base: CanvasDoc, local: CanvasDoc, remote: CanvasDoc): CanvasDoc {
  const baseNodes = new Map(base.nodes.map((n) => [n.id, n]));
  const localNodes = new Map(local.nodes.map((n) => [n.id, n]));
  const nodes: CanvasNode[] = [];
  const seen = new Set<string>();

  for (const r of remote.nodes) {
    seen.add(r.id);
    const b = baseNodes.get(r.id);
    const l = localNodes.get(r.id);
    if (!b) {
      // New on the server; ours too only if both views made the same id (then ours wins its fields).
      nodes.push(l ? mergeNode(r, r, l) : r);
    } else if (!l) {
      // We deleted it: stays deleted.
    } else {
      nodes.push(mergeNode(b, r, l));
    }
  }
  for (const l of local.nodes) {
    if (seen.has(l.id)) continue;
    const b = baseNodes.get(l.id);
    if (!b || !jsonEqual(b, l)) nodes.push(l); // added here, or changed here while the server deleted it
  }

  const ids = new Set(nodes.map((n) => n.id));
  const baseEdges = new Set(base.edges.map((e) => e.id));
  const localEdges = new Set(local.edges.map((e) => e.id));
  const edges: CanvasEdge[] = [];
  const edgeIds = new Set<string>();
  for (const e of remote.edges) {
    if (baseEdges.has(e.id) && !localEdges.has(e.id)) continue; // we deleted it
    edges.push(e);
    edgeIds.add(e.id);
  }
  for (const e of local.edges) {
    if (!baseEdges.has(e.id) && !edgeIds.has(e.id)) {
      edges.push(e);
      edgeIds.add(e.id);
    }
  }

  return {
    name: local.name !== base.name ? local.name : remote.name,
    viewport: jsonEqual(local.viewport, base.viewport) ? remote.viewport : local.viewport,
    nodes,
    edges: dedupePairs(edges.filter((e) => ids.has(e.source) && ids.has(e.target))),
  };
}

function mergeNode(base: CanvasNode, remote: CanvasNode, local: CanvasNode): CanvasNode {
  if (jsonEqual(base, local)) return remote;
  const movedHere = base.position_x !== local.position_x || base.position_y !== local.position_y;
  const data: Record<string, unknown> = { ...remote.data };
  const keys = new Set([...Object.keys(base.data), ...Object.keys(local.data)]);
  for (const key of keys) {
    if (!jsonEqual(base.data[key], local.data[key])) {
      if (local.data[key] === undefined) delete data[key];
      else data[key] = local.data[key];
    }
  }
  return {
    ...remote,
    type: local.type,
    position_x: movedHere ? local.position_x : remote.position_x,
    position_y: movedHere ? local.position_y : remote.position_y,
    data,
  };
}

/** Two views may connect the same pair under different ids: keep one. */
function dedupePairs(edges: CanvasEdge[]): CanvasEdge[] {
  const pairs = new Set<string>();
  return edges.filter((e) => {
    const pair = `${e.source}\u0000${e.target}\u0000${e.source_handle ?? ""}\u0000${e.target_handle ?? ""}`;
    if (pairs.has(pair)) return false;
    pairs.add(pair);
    return true;
  });
}
