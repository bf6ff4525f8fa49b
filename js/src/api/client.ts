// Typed calls of the routes the canvas uses, over whichever Transport was chosen.
import type { Transport } from "../transport/transport";
import type { Canvas, CanvasPut, GenerateAnswer, GenerateGraph, Health, Job, JobsPage, ProvidersAnswer } from "./types";

/** At most this many pages of 500 jobs are loaded for one canvas at start. */
const MAX_JOB_PAGES = 10;

export class ImagenApi {
  constructor(readonly transport: Transport) {}

  health(): Promise<Health> {
    return this.transport.request<Health>("GET", "health");
  }

  providers(): Promise<ProvidersAnswer> {
    return this.transport.request<ProvidersAnswer>("GET", "providers");
  }

  /** One Generate of an image node: the server builds and queues its jobs (docs/api.md). */
  generateNode(canvasId: string, nodeId: string, graph: GenerateGraph, idempotencyKey: string): Promise<GenerateAnswer> {
    const path = `canvases/${encodeURIComponent(canvasId)}/nodes/${encodeURIComponent(nodeId)}/generate`;
    return this.transport.request<GenerateAnswer>("POST", path, { body: graph, headers: { "Idempotency-Key": idempotencyKey } });
  }

  job(id: string): Promise<Job> {
    return this.transport.request<Job>("GET", `jobs/${encodeURIComponent(id)}`);
  }

  cancelJob(id: string): Promise<Job> {
    return this.transport.request<Job>("POST", `jobs/${encodeURIComponent(id)}/cancel`);
  }

  /** Every job of a canvas (or of one of its nodes), following `next_cursor`. */
  async canvasJobs(canvasId: string, nodeId?: string): Promise<Job[]> {
    const jobs: Job[] = [];
    let cursor: string | null = null;
    for (let page = 0; page < MAX_JOB_PAGES; page += 1) {
      const answer: JobsPage = await this.transport.request<JobsPage>("GET", "jobs", {
        query: { canvas_id: canvasId, node_id: nodeId, limit: 500, cursor },
      });
      jobs.push(...answer.jobs);
      cursor = answer.next_cursor;
      if (!cursor) break;
    }
    return jobs;
  }

  canvas(id: string): Promise<Canvas> {
    return this.transport.request<Canvas>("GET", `canvases/${encodeURIComponent(id)}`);
  }

  saveCanvas(id: string, body: CanvasPut, keepalive = false): Promise<Canvas> {
    return this.transport.request<Canvas>("PUT", `canvases/${encodeURIComponent(id)}`, { body, keepalive });
  }
}
