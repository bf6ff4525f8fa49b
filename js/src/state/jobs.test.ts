import { describe, expect, it } from "vitest";
import { event, image, job } from "../tests/fixtures";
import { applyEvent, mergeFetched, placeholderJob } from "./jobs";
import { applyJobEvent, createCanvasStore, upsertJobs } from "./store";

describe("a job's live state from its events", () => {
  it("goes pending → running → progress → done", () => {
    let j = job();
    j = applyEvent(j, event(j.id, { kind: "state", status: "running", ts: "2026-12-01T10:00:06+00:00" }));
    expect(j.status).toBe("running");
    expect(j.started_at).toBe("2026-12-01T10:00:06+00:00");
    j = applyEvent(j, event(j.id, { kind: "progress", progress: 0.5, message: "step 2 of 4" }));
    expect(j.progress).toBe(0.5);
    j = applyEvent(j, event(j.id, { kind: "state", status: "done", image_id: "img-1", ts: "2026-12-01T10:00:09+00:00" }));
    expect(j).toMatchObject({ status: "done", image_id: "img-1", progress: 1, completed_at: "2026-12-01T10:00:09+00:00" });
  });

  it("says why it waits while no worker can run it, and stops saying so once running", () => {
    let j = job();
    j = applyEvent(j, event(j.id, { kind: "waiting", message: "no live worker can run provider openai" }));
    expect(j.waiting_for_worker).toBe("no live worker can run provider openai");
    j = applyEvent(j, event(j.id, { kind: "state", status: "running" }));
    expect(j.waiting_for_worker).toBeNull();
  });

  it("keeps the error of a failed job", () => {
    const j = applyEvent(job({ status: "running" }), event("x", { kind: "state", status: "failed", error: "content policy: change the prompt" }));
    expect(j).toMatchObject({ status: "failed", error: "content policy: change the prompt" });
  });

  it("never leaves a terminal state for a late earlier event", () => {
    const done = job({ status: "done", image_id: "img" });
    expect(applyEvent(done, event(done.id, { kind: "state", status: "running" }))).toBe(done);
    expect(applyEvent(done, event(done.id, { kind: "progress", progress: 0.2 }))).toBe(done);
  });

  it("goes back to pending on a retry, progress cleared", () => {
    const j = applyEvent(job({ status: "running", progress: 0.7 }), event("x", { kind: "state", status: "pending" }));
    expect(j).toMatchObject({ status: "pending", progress: null });
  });

  it("makes a placeholder from the first event of a job it did not know", () => {
    const e = event("job-new", { kind: "state", status: "running" });
    expect(placeholderJob(e)).toMatchObject({ id: "job-new", status: "running", node_id: "image-1" });
  });
});

describe("merging a fetched copy", () => {
  it("takes the fetched copy when no event came since the fetch", () => {
    const current = job({ status: "running" });
    const fetched = { ...current, status: "running" as const, cost_usd: 0.1 };
    expect(mergeFetched(current, fetched, false)).toBe(fetched);
  });

  it("keeps the live fields from events that arrived while the fetch was out", () => {
    const current = job({ status: "running", progress: 0.75 });
    const fetched = { ...current, status: "pending" as const, progress: null };
    expect(mergeFetched(current, fetched, true)).toMatchObject({ status: "running", progress: 0.75 });
  });

  it("takes a terminal fetched copy whole, with its image", () => {
    const current = job({ status: "running" });
    const img = image();
    const fetched = { ...current, status: "done" as const, image_id: img.id, image: img };
    expect(mergeFetched(current, fetched, true)).toBe(fetched);
  });

  it("never lets a stale fetch undo a terminal state", () => {
    const current = job({ status: "cancelled" });
    expect(mergeFetched(current, { ...current, status: "running" }, false)).toBe(current);
  });
});

describe("jobs in the store", () => {
  it("files each job under its node, oldest first, replacing only that node's list", () => {
    const store = createCanvasStore("canvas-1");
    const a = job({ node_id: "n1", created_at: "2026-12-01T10:00:02+00:00" });
    const b = job({ node_id: "n1", created_at: "2026-12-01T10:00:01+00:00" });
    const c = job({ node_id: "n2" });
    upsertJobs(store, [a, b, c]);
    const before = store.getState().nodeJobs;
    expect(before["n1"]?.map((j) => j.id)).toEqual([b.id, a.id]);
    applyJobEvent(store, event(a.id, { node_id: "n1", kind: "state", status: "running" }));
    const after = store.getState().nodeJobs;
    expect(after["n1"]).not.toBe(before["n1"]);
    expect(after["n2"]).toBe(before["n2"]);
    expect(store.getState().jobs[a.id]?.status).toBe("running");
  });

  it("ignores events of other canvases' unknown jobs, and reports this canvas's new ones", () => {
    const store = createCanvasStore("canvas-1");
    expect(applyJobEvent(store, event("j-other", { canvas_id: "canvas-2" }))).toBe("ignored");
    expect(applyJobEvent(store, event("j-mine", { kind: "state", status: "pending" }))).toBe("new");
    expect(store.getState().jobs["j-mine"]?.status).toBe("pending");
  });

  it("keeps the latest progress message of a job", () => {
    const store = createCanvasStore("canvas-1");
    const j = job({ status: "running" });
    upsertJobs(store, [j]);
    applyJobEvent(store, event(j.id, { kind: "progress", progress: 0.25, message: "step 1 of 4" }));
    expect(store.getState().jobMessages[j.id]).toBe("step 1 of 4");
  });
});
