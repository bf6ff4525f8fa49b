// What a Generate sends of the graph. The jobs built from it (prompt, spec, variants, seeds, refinement) are the
// server's: tests/integration/test_generate_node.py.
import { describe, expect, it } from "vitest";
import type { Provider } from "../api/types";
import { findModel, generationGraph } from "./generate";
import { defaultImageData, defaultPromptData, type FlowEdge, type FlowNode } from "./graph";

function imageNode(id: string, data: Partial<ReturnType<typeof defaultImageData>> = {}): FlowNode {
  return { id, type: "image", position: { x: 10, y: 20 }, selected: true, data: { ...defaultImageData("local", "local-v1"), ...data } };
}

function promptNode(id: string, text: string): FlowNode {
  return { id, type: "prompt", position: { x: 0, y: 0 }, data: { ...defaultPromptData(), text } };
}

const edge = (source: string, target: string): FlowEdge => ({ id: `${source}-${target}`, source, target });

describe("the graph a Generate sends", () => {
  it("is the node, the edges into it and their sources, and nothing else of the canvas", () => {
    const nodes = [promptNode("p1", "a lighthouse"), promptNode("p2", "unrelated"), imageNode("src"), imageNode("img", { prompt: "mine" }), imageNode("next")];
    const edges = [edge("p1", "img"), edge("src", "img"), edge("img", "next"), edge("p2", "next")];
    const graph = generationGraph(nodes, edges, "img");
    expect(graph?.nodes.map((n) => n.id)).toEqual(["img", "p1", "src"]);
    expect(graph?.edges).toEqual([
      { id: "p1-img", source: "p1", target: "img", source_handle: null, target_handle: null },
      { id: "src-img", source: "src", target: "img", source_handle: null, target_handle: null },
    ]);
  });

  it("carries each node's data as the view holds it, without React Flow's UI fields", () => {
    const graph = generationGraph([imageNode("img", { prompt: "typed, not saved", variants: 3 })], [], "img");
    expect(graph?.nodes).toEqual([{ id: "img", type: "image", data: expect.objectContaining({ prompt: "typed, not saved", variants: 3 }) }]);
  });

  it("sends a source connected twice once, and skips an edge whose source is gone", () => {
    const nodes = [promptNode("p", "x"), imageNode("img")];
    const edges = [edge("p", "img"), { id: "again", source: "p", target: "img" }, edge("gone", "img")];
    const graph = generationGraph(nodes, edges, "img");
    expect(graph?.nodes.map((n) => n.id)).toEqual(["img", "p"]);
    expect(graph?.edges.map((e) => e.id)).toEqual(["p-img", "again"]);
  });

  it("is null for a node the view does not have", () => {
    expect(generationGraph([imageNode("img")], [], "missing")).toBeNull();
  });
});

describe("a model's capabilities", () => {
  const providers = [
    { name: "local", available: true, reason: null, live_workers: 1, default_model: "local-v1",
      models: [{ model: "local-v1", sizes: [], aspect_ratios: ["1:1"], qualities: [], seed: true, negative_prompt: true, edit: true,
                 max_prompt_chars: 100, default_size: "512x512", max_side: 2048, price_usd: 0 }] },
  ] as Provider[];

  it("an empty model (a node made from Python) is the provider's default model", () => {
    expect(findModel(providers, "local", "")?.model).toBe("local-v1");
    expect(findModel(providers, "local", "local-v1")?.seed).toBe(true);
    expect(findModel(providers, "local", "nope")).toBeNull();
    expect(findModel(providers, "openai", "")).toBeNull();
  });
});
