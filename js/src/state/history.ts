// A node's history of generations: its jobs grouped by `group_id` (one Generate click), oldest first.
import { type Job, type JobStatus, TERMINAL } from "../api/types";

export interface HistoryGroup {
  /** `group_id`, or the job's own id for a job made without one (the notebook API, an older view). */
  key: string;
  jobs: Job[];
}

function byCreated(a: Job, b: Job): number {
  return a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

export function sortJobs(jobs: readonly Job[]): Job[] {
  return [...jobs].sort(byCreated);
}

export function groupHistory(jobs: readonly Job[]): HistoryGroup[] {
  const groups = new Map<string, Job[]>();
  for (const job of sortJobs(jobs)) {
    const key = job.group_id ?? job.id;
    const list = groups.get(key);
    if (list) list.push(job);
    else groups.set(key, [job]);
  }
  // Map keeps insertion order: groups come in the order of their first job.
  return [...groups.entries()].map(([key, list]) => ({ key, jobs: list }));
}

export function groupIndexOfJob(groups: readonly HistoryGroup[], jobId: string | null): number {
  if (!jobId) return -1;
  return groups.findIndex((g) => g.jobs.some((j) => j.id === jobId));
}

const RANK: Record<JobStatus, number> = { running: 0, pending: 1, done: 2, failed: 3, cancelled: 4 };

/** One status word for a group: running or pending while any job is; else done if any is; else failed/cancelled. */
export function groupStatus(group: HistoryGroup): JobStatus {
  let best: JobStatus = "cancelled";
  for (const job of group.jobs) if (RANK[job.status] < RANK[best]) best = job.status;
  return best;
}

export function isActive(job: Job): boolean {
  return !TERMINAL.has(job.status);
}

/** Seconds from start to completion of a finished job. */
export function durationSeconds(job: Job): number | null {
  if (!job.completed_at) return null;
  const end = Date.parse(job.completed_at);
  const start = Date.parse(job.started_at ?? job.created_at);
  if (Number.isNaN(end) || Number.isNaN(start)) return null;
  return Math.max(0, (end - start) / 1000);
}

export function groupCost(group: HistoryGroup): number | null {
  let total: number | null = null;
  for (const job of group.jobs) if (job.cost_usd !== null && job.cost_usd !== undefined) total = (total ?? 0) + job.cost_usd;
  return total;
}

export function totalCost(jobs: Iterable<Job>): number {
  let total = 0;
  for (const job of jobs) if (typeof job.cost_usd === "number") total += job.cost_usd;
  return total;
}
