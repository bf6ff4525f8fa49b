// Jobs, images and events as the server sends them, for unit tests.
import type { Image, Job, JobEvent } from "../api/types";

let seq = 0;

export function image(overrides: Partial<Image> = {}): Image {
  seq += 1;
  return {
    id: `img-${seq}`,
    owner_user_id: "owner",
    job_id: "job",
    bucket: "images",
    path: "owner/job.png",
    thumb_path: "owner/job.thumb.webp",
    content_type: "image/png",
    width: 512,
    height: 512,
    bytes: 1000,
    sha256: "00",
    provider: "local",
    model: "local-v1",
    seed: 7,
    created_at: "2026-12-01T10:00:00+00:00",
    url: "/imagen/files/images/owner/job.png?expires=1&sig=s",
    thumbnail_url: "/imagen/files/images/owner/job.thumb.webp?expires=1&sig=s",
    expires_at: null,
    ...overrides,
  };
}

export function job(overrides: Partial<Job> = {}): Job {
  seq += 1;
  return {
    id: `job-${seq}`,
    owner_user_id: "owner",
    canvas_id: "canvas-1",
    node_id: "image-1",
    group_id: null,
    provider: "local",
    model: "local-v1",
    prompt: "a red fox",
    spec: {},
    status: "pending",
    priority: 50,
    attempts: 0,
    max_attempts: 3,
    run_at: "2026-12-01T10:00:00+00:00",
    idempotency_key: null,
    created_at: `2026-12-01T10:00:${String(seq % 60).padStart(2, "0")}+00:00`,
    started_at: null,
    completed_at: null,
    image_id: null,
    error: null,
    cost_usd: null,
    progress: null,
    waiting_for_worker: null,
    image: null,
    ...overrides,
  };
}

export function event(jobId: string, overrides: Partial<JobEvent> = {}): JobEvent {
  seq += 1;
  return {
    event_id: seq,
    job_id: jobId,
    canvas_id: "canvas-1",
    node_id: "image-1",
    kind: "state",
    status: null,
    progress: null,
    message: null,
    error: null,
    image_id: null,
    ts: "2026-12-01T10:00:05+00:00",
    cursor: `c${seq}`,
    ...overrides,
  };
}
