import { describe, expect, it } from "vitest";
import type { Provider } from "../api/types";
import { job, image } from "../tests/fixtures";
import { planGeneration } from "./generate";
import { defaultImageData, defaultPromptData, type FlowEdge, type FlowNode } from "./graph";

const providers: Provider[] = [
  {
    name: "local",
    available: true,
    reason: null,
    live_workers: 1,
    default_model: "local-v1",
    models: [{ model: "local-v1", sizes: [], aspect_ratios: ["1:1"], qualities: [], seed: true, negative_prompt: true, edit: true, max_prompt_chars: 100, default_size: "512x512", max_side: 2048, price_usd: 0 }],
  },
  {
    name: "openai",
    available: false,
    reason: "OPENAI_API_KEY is not set",
    live_workers: 0,
    default_model: "dall-e-3",
    models: [{ model: "dall-e-3", sizes: ["1024x1024"], aspect_ratios: [], qualities: ["hd"], seed: false, negative_prompt: false, edit: false, max_prompt_chars: 4000, default_size: "1024x1024", max_side: 1792, price_usd: 0.04 }],
  },
];

function imageNode(id: string, data: Partial<ReturnType<typeof defaultImageData>> = {}): FlowNode {
  return { id, type: "image", position: { x: 0, y: 0 }, data: { ...defaultImageData("local", "local-v1"), ...data } };
}

function promptNode(id: string, text: string, style_modifiers: string[] = []): FlowNode {
  return { id, type: "prompt", position: { x: 0, y: 0 }, data: { ...defaultPromptData(), text, style_modifiers } };
}

const edge = (source: string, target: string): FlowEdge => ({ id: `${source}-${target}`, source, target });

function plan(nodes: FlowNode[], edges: FlowEdge[] = [], nodeId = "img", jobs = {}) {
  return planGeneration({ nodes, edges, jobs, providers, canvasId: "canvas-1", nodeId, groupId: "group-1" });
}

describe("what Generate submits", () => {
  it("one job per variant, one group, the node and canvas named, defaults left out", () => {
    const result = plan([imageNode("img", { prompt: "a fox", variants: 3 })]);
    if ("error" in result) throw new Error(result.error);
    expect(result.bodies).toHaveLength(3);
    for (const body of result.bodies) {
      expect(body).toEqual({ prompt: "a fox", provider: "local", model: "local-v1", canvas_id: "canvas-1", node_id: "img", group_id: "group-1" });
    }
  });

  it("with the seed locked, variant i uses seed + i", () => {
    const result = plan([imageNode("img", { prompt: "a fox", variants: 4, seed: 41, seed_locked: true })]);
    if ("error" in result) throw new Error(result.error);
    expect(result.bodies.map((b) => b.seed)).toEqual([41, 42, 43, 44]);
  });

  it("leaves the seed to the provider when unlocked", () => {
    const result = plan([imageNode("img", { prompt: "a fox", seed: 41, seed_locked: false })]);
    if ("error" in result) throw new Error(result.error);
    expect(result.bodies[0]).not.toHaveProperty("seed");
  });

  it("takes the prompt and style modifiers of the connected prompt nodes", () => {
    const nodes = [promptNode("p1", "a lighthouse", ["oil"]), promptNode("p2", "at dusk", ["oil", "warm"]), imageNode("img", { prompt: "ignored" })];
    const result = plan(nodes, [edge("p1", "img"), edge("p2", "img")]);
    if ("error" in result) throw new Error(result.error);
    expect(result.bodies[0]).toMatchObject({ prompt: "a lighthouse, at dusk", style_modifiers: ["oil", "warm"] });
  });

  it("refines from the source node's current image", () => {
    const src = job({ node_id: "src", status: "done", image_id: "img-9", image: image({ id: "img-9" }) });
    const nodes = [imageNode("src", { current_job_id: src.id }), imageNode("img", { prompt: "sharper" })];
    const result = plan(nodes, [edge("src", "img")], "img", { [src.id]: src });
    if ("error" in result) throw new Error(result.error);
    expect(result.bodies[0]?.previous_image_id).toBe("img-9");
  });

  it("passes provider options set on the node through", () => {
    const node = imageNode("img", { prompt: "a fox" });
    (node.data as Record<string, unknown>)["options"] = { delay_s: 5 };
    const result = plan([node]);
    if ("error" in result) throw new Error(result.error);
    expect(result.bodies[0]?.options).toEqual({ delay_s: 5 });
  });

  it("a refinement with no prompt of its own keeps the prompt that made the source image", () => {
    const src = job({ node_id: "src", status: "done", prompt: "a harbour", spec: { style_modifiers: ["ink"] }, image_id: "img-3" });
    const nodes = [imageNode("src", { current_job_id: src.id }), imageNode("img")];
    const result = plan(nodes, [edge("src", "img")], "img", { [src.id]: src });
    if ("error" in result) throw new Error(result.error);
    expect(result.bodies[0]).toMatchObject({ prompt: "a harbour", style_modifiers: ["ink"], previous_image_id: "img-3" });
  });

  it("sends only the fields the model accepts", () => {
    const result = plan([imageNode("img", { prompt: "a fox", provider: "openai", model: "dall-e-3", seed: 3, seed_locked: true, negative_prompt: "blur", size: "1024x1024", quality: "hd" })]);
    if ("error" in result) throw new Error(result.error);
    expect(result.bodies[0]).toMatchObject({ size: "1024x1024", quality: "hd" });
    expect(result.bodies[0]).not.toHaveProperty("seed");
    expect(result.bodies[0]).not.toHaveProperty("negative_prompt");
  });

  it("refuses, saying what to do, rather than submit a job that cannot run", () => {
    expect(plan([imageNode("img", { prompt: "   " })])).toEqual({ error: "Type a prompt first." });
    expect(plan([promptNode("p", ""), imageNode("img")], [edge("p", "img")])).toMatchObject({ error: expect.stringContaining("prompt node is empty") });
    expect(plan([imageNode("src"), imageNode("img", { prompt: "x" })], [edge("src", "img")])).toMatchObject({ error: expect.stringContaining("generate it first") });
    expect(plan([imageNode("img", { prompt: "x".repeat(101) })])).toMatchObject({ error: expect.stringContaining("at most 100") });
    expect(plan([imageNode("img", { prompt: "x", model: "nope" })])).toMatchObject({ error: expect.stringContaining("not offered") });
  });
});

describe("a node without a model (made from Python)", () => {
  it("uses the provider's default model for its capabilities and lets the server pick it", async () => {
    const { planGeneration } = await import("./generate");
    const providers = [
      { name: "local", available: true, reason: null, live_workers: 1, default_model: "local-v1",
        models: [{ model: "local-v1", sizes: [], aspect_ratios: ["1:1"], qualities: [], seed: true, negative_prompt: true,
                   edit: true, webhook: false, cancel: true, max_side: 2048, default_size: "512x512",
                   max_prompt_chars: 32000, price_usd: "0" }] },
    ];
    const node = { id: "n1", type: "image", position: { x: 0, y: 0 },
      data: { prompt: "a fox", provider: "local", model: "", size: null, aspect_ratio: null, quality: null, seed: null,
              seed_locked: false, negative_prompt: null, variants: 1, current_job_id: null } };
    const plan = planGeneration({ nodes: [node] as never, edges: [], jobs: {}, providers: providers as never,
      canvasId: "c", nodeId: "n1", groupId: "g" });
    expect("error" in plan).toBe(false);
    if (!("error" in plan)) expect(plan.bodies[0]).not.toHaveProperty("model");
  });
});
