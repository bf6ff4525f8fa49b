// The canvas graph as React Flow holds it, node data defaults, and the edge rules of docs/api.md.
import type { Edge, Node } from "@xyflow/react";
import type { ImageNodeData, PromptNodeData } from "../api/types";

export type PromptFlowNode = Node<PromptNodeData, "prompt">;
export type ImageFlowNode = Node<ImageNodeData, "image">;
export type FlowNode = PromptFlowNode | ImageFlowNode;
export type FlowEdge = Edge;

export const MAX_VARIANTS = 4;

export function newId(prefix: string): string {
  const uuid = typeof crypto !== "undefined" && "randomUUID" in crypto ? crypto.randomUUID() : uuidV4();
  return `${prefix}-${uuid.slice(0, 8)}`;
}

/** A uuid v4 (group ids are made in the browser). */
export function uuidV4(): string {
  if (typeof crypto !== "undefined" && "randomUUID" in crypto) return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 16; i += 1) bytes[i] = Math.floor(Math.random() * 256);
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x40;
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export function defaultPromptData(): PromptNodeData {
  return { text: "", style_modifiers: [] };
}

export function defaultImageData(provider: string, model: string): ImageNodeData {
  return {
    prompt: "",
    provider,
    model,
    size: null,
    aspect_ratio: null,
    quality: null,
    seed: null,
    seed_locked: false,
    negative_prompt: null,
    variants: 1,
    current_job_id: null,
  };
}

const str = (v: unknown): string | null => (typeof v === "string" ? v : null);
const int = (v: unknown): number | null => (typeof v === "number" && Number.isInteger(v) ? v : null);

/** Node data as stored may come from Python or an older view: known fields typed, others kept as they are. */
export function normalizePromptData(raw: Record<string, unknown>): PromptNodeData {
  const modifiers = Array.isArray(raw["style_modifiers"])
    ? raw["style_modifiers"].filter((m): m is string => typeof m === "string")
    : [];
  return { ...raw, text: str(raw["text"]) ?? "", style_modifiers: modifiers };
}

export function normalizeImageData(raw: Record<string, unknown>, provider: string, model: string): ImageNodeData {
  const variants = int(raw["variants"]) ?? 1;
  return {
    ...raw,
    prompt: str(raw["prompt"]) ?? "",
    provider: str(raw["provider"]) ?? provider,
    model: str(raw["model"]) ?? model,
    size: str(raw["size"]),
    aspect_ratio: str(raw["aspect_ratio"]),
    quality: str(raw["quality"]),
    seed: int(raw["seed"]),
    seed_locked: raw["seed_locked"] === true,
    negative_prompt: str(raw["negative_prompt"]),
    variants: Math.min(MAX_VARIANTS, Math.max(1, variants)),
    current_job_id: str(raw["current_job_id"]),
  };
}

export function isImageNode(node: FlowNode | undefined): node is ImageFlowNode {
  return node?.type === "image";
}

export function isPromptNode(node: FlowNode | undefined): node is PromptFlowNode {
  return node?.type === "prompt";
}

/**
 * Edges the canvas allows: prompt → image (gives the prompt) and image → image (refine from the source's
 * current image), never into a prompt, never a node to itself, never twice the same pair.
 */
export function canConnect(nodes: readonly FlowNode[], edges: readonly FlowEdge[], source: string, target: string): boolean {
  if (source === target) return false;
  const from = nodeById(nodes, source);
  const to = nodeById(nodes, target);
  if (!from || !isImageNode(to)) return false;
  if (edges.some((e) => e.source === source && e.target === target)) return false;
  if (isImageNode(from) && createsCycle(nodes, edges, source, target)) return false;
  return true;
}

function createsCycle(nodes: readonly FlowNode[], edges: readonly FlowEdge[], source: string, target: string): boolean {
  const images = new Set(nodes.filter(isImageNode).map((n) => n.id));
  const seen = new Set<string>();
  const stack = [target];
  while (stack.length) {
    const id = stack.pop() as string;
    if (id === source) return true;
    if (seen.has(id)) continue;
    seen.add(id);
    for (const e of edges) if (e.source === id && images.has(e.target)) stack.push(e.target);
  }
  return false;
}

const incoming = new WeakMap<readonly FlowEdge[], Map<string, FlowEdge[]>>();

/** The edges into `target`, in edge order, from an index cached per edges array. */
export function incomingEdges(edges: readonly FlowEdge[], target: string): readonly FlowEdge[] {
  let index = incoming.get(edges);
  if (!index) {
    index = new Map();
    for (const e of edges) {
      const list = index.get(e.target);
      if (list) list.push(e);
      else index.set(e.target, [e]);
    }
    incoming.set(edges, index);
  }
  return index.get(target) ?? [];
}

/** The prompt nodes feeding an image node, in edge order. */
export function promptSources(nodes: readonly FlowNode[], edges: readonly FlowEdge[], target: string): PromptFlowNode[] {
  const out: PromptFlowNode[] = [];
  for (const e of incomingEdges(edges, target)) {
    const source = nodeById(nodes, e.source);
    if (isPromptNode(source)) out.push(source);
  }
  return out;
}

/** The image node an image node refines from (at most one: a new image edge replaces the old). */
export function imageSource(nodes: readonly FlowNode[], edges: readonly FlowEdge[], target: string): ImageFlowNode | null {
  for (const e of incomingEdges(edges, target)) {
    const source = nodeById(nodes, e.source);
    if (isImageNode(source)) return source;
  }
  return null;
}

/** The image nodes a prompt node feeds. */
export function imageTargets(nodes: readonly FlowNode[], edges: readonly FlowEdge[], source: string): ImageFlowNode[] {
  const out: ImageFlowNode[] = [];
  for (const e of edges) {
    if (e.source !== source) continue;
    const target = nodeById(nodes, e.target);
    if (isImageNode(target)) out.push(target);
  }
  return out;
}

/** Index of nodes by id, cached per nodes array (node components select by id without scanning). */
const indexes = new WeakMap<readonly FlowNode[], Map<string, FlowNode>>();

export function nodeById(nodes: readonly FlowNode[], id: string): FlowNode | undefined {
  let index = indexes.get(nodes);
  if (!index) {
    index = new Map(nodes.map((n) => [n.id, n]));
    indexes.set(nodes, index);
  }
  return index.get(id);
}

const GAP = 40;

function box(node: FlowNode): { x: number; y: number; w: number; h: number } {
  return {
    x: node.position.x,
    y: node.position.y,
    w: node.measured?.width ?? (node.type === "image" ? 300 : 280),
    h: node.measured?.height ?? (node.type === "image" ? 560 : 240),
  };
}

/** The first place at or right of `at` (`columns` wide, then row by row below) where a new node overlaps none. */
export function freeSpot(
  nodes: readonly FlowNode[],
  at: { x: number; y: number },
  type: FlowNode["type"],
  columns = 12,
): { x: number; y: number } {
  const w = type === "image" ? 300 : 280;
  const h = type === "image" ? 560 : 240;
  const boxes = nodes.map(box);
  const clear = (x: number, y: number) =>
    boxes.every((b) => x + w + GAP <= b.x || b.x + b.w + GAP <= x || y + h + GAP <= b.y || b.y + b.h + GAP <= y);
  for (let row = 0; row < 20; row += 1) {
    for (let col = 0; col < Math.max(1, columns); col += 1) {
      const x = at.x + col * (w + GAP);
      const y = at.y + row * (h + GAP);
      if (clear(x, y)) return { x, y };
    }
  }
  return at;
}
