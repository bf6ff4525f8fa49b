// What one Generate click submits: `variants` jobs of one `group_id`, each body built from the node and its inputs.
import type { ImageNodeData, JobCreate, ModelCapabilities, Provider } from "../api/types";
import { type FlowEdge, type FlowNode, imageSource, isImageNode, nodeById, promptSources } from "./graph";
import type { Job } from "../api/types";

export interface GeneratePlan {
  group_id: string;
  bodies: JobCreate[];
}

/** The prompt an image node runs with: its connected prompt nodes' text, else its own. */
export function effectivePrompt(
  nodes: readonly FlowNode[],
  edges: readonly FlowEdge[],
  nodeId: string,
): { prompt: string; style_modifiers: string[]; fromPromptNode: boolean } {
  const node = nodeById(nodes, nodeId);
  const sources = promptSources(nodes, edges, nodeId);
  if (sources.length) {
    const texts = sources.map((s) => s.data.text.trim()).filter(Boolean);
    const modifiers = [...new Set(sources.flatMap((s) => s.data.style_modifiers))];
    return { prompt: texts.join(", "), style_modifiers: modifiers, fromPromptNode: true };
  }
  return { prompt: isImageNode(node) ? node.data.prompt : "", style_modifiers: [], fromPromptNode: false };
}

/** The capabilities of a provider's model; an empty model means the provider's default model. */
export function findModel(providers: readonly Provider[], provider: string, model: string): ModelCapabilities | null {
  const found = providers.find((p) => p.name === provider);
  const name = model || found?.default_model;
  return found?.models.find((m) => m.model === name) ?? null;
}

/**
 * The jobs to submit for an image node, or the reason none can be (said on the node, nothing submitted).
 * Only fields the node set and the model accepts are sent; the seed is the node's when locked (+i for
 * variant i), else left to the provider, and the image's `seed` says afterwards which one made it.
 */
export function planGeneration(args: {
  nodes: readonly FlowNode[];
  edges: readonly FlowEdge[];
  jobs: Readonly<Record<string, Job>>;
  providers: readonly Provider[];
  canvasId: string;
  nodeId: string;
  groupId: string;
}): GeneratePlan | { error: string } {
  const node = nodeById(args.nodes, args.nodeId);
  if (!isImageNode(node)) return { error: "not an image node" };
  const data: ImageNodeData = node.data;
  const own = effectivePrompt(args.nodes, args.edges, node.id);
  let { prompt, style_modifiers } = own;
  const source = imageSource(args.nodes, args.edges, node.id);
  const sourceJob = source?.data.current_job_id ? args.jobs[source.data.current_job_id] : undefined;
  if (!prompt.trim() && sourceJob?.prompt && !own.fromPromptNode) {
    // A refinement with no prompt of its own keeps the prompt that made the image (as canvas.generate() does).
    prompt = sourceJob.prompt;
    style_modifiers = Array.isArray(sourceJob.spec.style_modifiers) ? sourceJob.spec.style_modifiers : [];
  }
  if (!prompt.trim()) {
    return { error: own.fromPromptNode ? "The connected prompt node is empty: type a prompt there." : "Type a prompt first." };
  }
  const capabilities = findModel(args.providers, data.provider, data.model);
  if (args.providers.length && !capabilities) {
    return { error: `${data.provider}/${data.model} is not offered by this server: pick another model.` };
  }
  if (capabilities && prompt.length > capabilities.max_prompt_chars) {
    return { error: `The prompt has ${prompt.length} characters; ${data.model} takes at most ${capabilities.max_prompt_chars}.` };
  }
  let previous_image_id: string | undefined;
  if (source) {
    if (!sourceJob?.image_id) return { error: "The image node this one refines from has no image yet: generate it first." };
    if (capabilities && !capabilities.edit) return { error: `${data.model} cannot refine an image: pick a model that can, or remove the incoming image edge.` };
    previous_image_id = sourceJob.image_id;
  }
  const seedAccepted = capabilities ? capabilities.seed : true;
  const negativeAccepted = capabilities ? capabilities.negative_prompt : true;
  const variants = Math.min(4, Math.max(1, data.variants));
  // Provider options (`delay_s` of local, a Replicate model's inputs) set on the node from Python pass through.
  const rawOptions = (data as Record<string, unknown>)["options"];
  const options =
    rawOptions && typeof rawOptions === "object" && !Array.isArray(rawOptions) && Object.keys(rawOptions).length
      ? (rawOptions as Record<string, unknown>)
      : null;
  const bodies: JobCreate[] = [];
  for (let i = 0; i < variants; i += 1) {
    const body: JobCreate = {
      prompt,
      provider: data.provider,
      ...(data.model ? { model: data.model } : {}), // none: the server uses the provider's default
      canvas_id: args.canvasId,
      node_id: node.id,
      group_id: args.groupId,
    };
    if (style_modifiers.length) body.style_modifiers = style_modifiers;
    if (data.size) body.size = data.size;
    else if (data.aspect_ratio) body.aspect_ratio = data.aspect_ratio;
    if (data.quality) body.quality = data.quality;
    if (negativeAccepted && data.negative_prompt?.trim()) body.negative_prompt = data.negative_prompt.trim();
    if (seedAccepted && data.seed_locked && data.seed !== null) body.seed = (data.seed + i) % 2 ** 32;
    if (previous_image_id) body.previous_image_id = previous_image_id;
    if (options) body.options = options;
    bodies.push(body);
  }
  return { group_id: args.groupId, bodies };
}
