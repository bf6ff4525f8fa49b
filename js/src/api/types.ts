// The JSON shapes of docs/api.md, field for field: these names are the contract's names.

export type JobStatus = "pending" | "running" | "done" | "failed" | "cancelled";

export const TERMINAL: ReadonlySet<JobStatus> = new Set(["done", "failed", "cancelled"]);

export interface JobSpec {
  size?: string;
  aspect_ratio?: string;
  quality?: string;
  seed?: number;
  style_modifiers?: string[];
  negative_prompt?: string;
  previous_image_id?: string;
  options?: Record<string, unknown>;
  [key: string]: unknown;
}

export interface Image {
  id: string;
  owner_user_id: string;
  job_id: string;
  bucket: string;
  path: string;
  thumb_path: string | null;
  content_type: string;
  width: number;
  height: number;
  bytes: number;
  sha256: string;
  provider: string;
  model: string;
  seed: number | null;
  created_at: string;
  url: string | null;
  thumbnail_url: string | null;
  expires_at: string | null;
}

export interface Job {
  id: string;
  owner_user_id: string;
  canvas_id: string | null;
  node_id: string | null;
  group_id: string | null;
  provider: string;
  model: string;
  prompt: string;
  spec: JobSpec;
  status: JobStatus;
  priority: number;
  attempts: number;
  max_attempts: number;
  run_at: string;
  idempotency_key: string | null;
  created_at: string;
  started_at: string | null;
  completed_at: string | null;
  image_id: string | null;
  error: string | null;
  cost_usd: number | null;
  progress: number | null;
  waiting_for_worker: string | null;
  image: Image | null;
}

export interface JobEvent {
  event_id: number;
  job_id: string;
  canvas_id: string | null;
  node_id: string | null;
  kind: "state" | "progress" | "waiting";
  status: JobStatus | null;
  progress: number | null;
  message: string | null;
  error: string | null;
  image_id: string | null;
  ts: string;
  cursor: string;
}

export interface Worker {
  id: string;
  host: string;
  pid: number;
  scope: "all" | "owner";
  owner_user_id: string | null;
  providers: string[];
  concurrency: number;
  started_at: string;
  last_seen_at: string;
}

export interface HelloMessage {
  kind: "hello";
  cursor: string;
  owner_user_id: string;
  workers: Worker[];
}

export interface CanvasMessage {
  kind: "canvas";
  canvas_id: string;
  version: number;
  ts: string;
  cursor?: string;
}

export interface WorkersMessage {
  kind: "workers";
  workers: Worker[];
}

export interface ResetMessage {
  kind: "reset";
  cursor: string;
}

/** The kernel transport's word to the user (it started a worker for this owner, ...). */
export interface NoticeMessage {
  kind: "notice";
  message: string;
}

/** One message of the event stream, the same shapes on the websocket and the kernel transport. */
export type StreamMessage = HelloMessage | JobEvent | CanvasMessage | WorkersMessage | ResetMessage | NoticeMessage;

export interface Viewport {
  x: number;
  y: number;
  zoom: number;
}

export type PromptNodeData = {
  text: string;
  style_modifiers: string[];
};

export type ImageNodeData = {
  prompt: string;
  provider: string;
  model: string;
  size: string | null;
  aspect_ratio: string | null;
  quality: string | null;
  seed: number | null;
  seed_locked: boolean;
  negative_prompt: string | null;
  variants: number;
  current_job_id: string | null;
};

export type CanvasNodeType = "prompt" | "image";

export interface CanvasNode {
  id: string;
  type: CanvasNodeType;
  position_x: number;
  position_y: number;
  data: Record<string, unknown>;
}

export interface CanvasEdge {
  id: string;
  source: string;
  target: string;
  source_handle: string | null;
  target_handle: string | null;
}

export interface Canvas {
  id: string;
  owner_user_id: string;
  name: string;
  version: number;
  viewport: Viewport;
  nodes: CanvasNode[];
  edges: CanvasEdge[];
  created_at: string;
  updated_at: string;
}

export interface CanvasPut {
  version: number;
  name?: string;
  viewport?: Viewport;
  nodes: CanvasNode[];
  edges: CanvasEdge[];
}

export interface ModelCapabilities {
  model: string;
  sizes: string[];
  aspect_ratios: string[];
  qualities: string[];
  seed: boolean;
  negative_prompt: boolean;
  edit: boolean;
  max_prompt_chars: number;
  default_size: string | null;
  max_side: number | null;
  price_usd: number | null;
}

export interface Provider {
  name: string;
  available: boolean;
  reason: string | null;
  live_workers: number;
  default_model: string;
  models: ModelCapabilities[];
}

export interface ProvidersAnswer {
  default_provider: string;
  providers: Provider[];
}

export interface Health {
  database: string;
  pending_migrations: string[];
  owner_user_id: string | null;
  storage_origin: string | null;
  default_provider: string | null;
  workers: Worker[];
  worker: Record<string, unknown> | null;
  error: string | null;
}

export interface JobsPage {
  jobs: Job[];
  next_cursor: string | null;
}

/** `POST api/canvases/{id}/nodes/{node_id}/generate` body: the node, the edges into it and their sources. */
export interface GenerateGraph {
  nodes: { id: string; type: CanvasNodeType; data: Record<string, unknown> }[];
  edges: CanvasEdge[];
}

/** Its answer: the jobs of one generation (one per variant, one `group_id`), first variant first. */
export interface GenerateAnswer {
  jobs: Job[];
}

export interface ErrorBody {
  error: {
    code: string;
    message: string;
    field?: string;
    current?: Canvas;
    retry_after?: number;
  };
}
