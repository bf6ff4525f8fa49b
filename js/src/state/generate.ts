// What one Generate click sends: the image node and what feeds it, as this view holds them. The server builds
// the jobs (imagen_worker.service.generate: prompt, spec, variants, seeds, the image it refines from).
import type { GenerateGraph, ModelCapabilities, Provider } from "../api/types";
import { type FlowEdge, type FlowNode, incomingEdges, nodeById } from "./graph";

/** The capabilities of a provider's model; an empty model means the provider's default model. */
export function findModel(providers: readonly Provider[], provider: string, model: string): ModelCapabilities | null {
  const found = providers.find((p) => p.name === provider);
  const name = model || found?.default_model;
  return found?.models.find((m) => m.model === name) ?? null;
}

/**
 * The graph `POST canvases/{id}/nodes/{node}/generate` needs, and no more: the node, the edges into it and
 * their source nodes (the view's current graph, which may be newer than the saved canvas). Null when the node
 * is not in the graph.
 */
export function generationGraph(nodes: readonly FlowNode[], edges: readonly FlowEdge[], nodeId: string): GenerateGraph | null {
  const node = nodeById(nodes, nodeId);
  if (!node) return null;
  const out: GenerateGraph = { nodes: [{ id: node.id, type: node.type, data: node.data as Record<string, unknown> }], edges: [] };
  const sent = new Set([node.id]);
  for (const e of incomingEdges(edges, nodeId)) {
    const source = nodeById(nodes, e.source);
    if (!source) continue;
    out.edges.push({ id: e.id, source: e.source, target: e.target, source_handle: e.sourceHandle ?? null, target_handle: e.targetHandle ?? null });
    if (!sent.has(source.id)) {
      sent.add(source.id);
      out.nodes.push({ id: source.id, type: source.type, data: source.data as Record<string, unknown> });
    }
  }
  return out;
}
