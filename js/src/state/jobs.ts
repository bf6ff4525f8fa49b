// How a job's live state moves: stream events applied in order, and fetched copies merged without going back.
import { type Job, type JobEvent, TERMINAL } from "../api/types";

/** The job after one of its events. Events arrive in stream order, so each is applied as it comes. */
export function applyEvent(job: Job, event: JobEvent): Job {
  switch (event.kind) {
    case "state": {
      const status = event.status;
      if (!status) return job;
      if (TERMINAL.has(job.status) && !TERMINAL.has(status)) {
        // A terminal state is final; a late or replayed earlier state cannot undo it.
        return job;
      }
      const next: Job = { ...job, status };
      if (status === "running") {
        next.waiting_for_worker = null;
        next.started_at = job.started_at ?? event.ts;
        next.error = null;
      } else if (status === "pending") {
        next.progress = null;
      } else {
        next.waiting_for_worker = null;
        next.completed_at = job.completed_at ?? event.ts;
        if (status === "done") next.progress = 1;
        if (event.error) next.error = event.error;
      }
      if (event.image_id) next.image_id = event.image_id;
      return next;
    }
    case "progress": {
      if (TERMINAL.has(job.status)) return job;
      const progress = typeof event.progress === "number" ? Math.min(1, Math.max(0, event.progress)) : job.progress;
      return { ...job, status: "running", progress, waiting_for_worker: null };
    }
    case "waiting":
      if (job.status !== "pending") return job;
      return { ...job, waiting_for_worker: event.message ?? "no live worker can run this job yet" };
    default:
      return job;
  }
}

/**
 * A copy of the job fetched over REST while events kept coming. `eventsSince` says whether events arrived
 * after the fetch was sent: then the live fields (status, progress, waiting) stay as the events made them,
 * unless the fetched copy is terminal, which is final.
 */
export function mergeFetched(current: Job | undefined, fetched: Job, eventsSince: boolean): Job {
  if (!current) return fetched;
  if (TERMINAL.has(current.status) && !TERMINAL.has(fetched.status)) return current;
  if (TERMINAL.has(fetched.status) || !eventsSince) return fetched;
  return {
    ...fetched,
    status: current.status,
    progress: current.progress,
    waiting_for_worker: current.waiting_for_worker,
  };
}

/** A job not yet known to this view, made from its first event, until the fetch fills in the rest. */
export function placeholderJob(event: JobEvent): Job {
  const base: Job = {
    id: event.job_id,
    owner_user_id: "",
    canvas_id: event.canvas_id,
    node_id: event.node_id,
    group_id: null,
    provider: "",
    model: "",
    prompt: "",
    spec: {},
    status: "pending",
    priority: 50,
    attempts: 0,
    max_attempts: 3,
    run_at: event.ts,
    idempotency_key: null,
    created_at: event.ts,
    started_at: null,
    completed_at: null,
    image_id: null,
    error: null,
    cost_usd: null,
    progress: null,
    waiting_for_worker: null,
    image: null,
  };
  return applyEvent(base, event);
}
