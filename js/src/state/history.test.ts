import { describe, expect, it } from "vitest";
import { job } from "../tests/fixtures";
import { durationSeconds, groupCost, groupHistory, groupIndexOfJob, groupStatus, totalCost } from "./history";

describe("a node's history", () => {
  it("groups one Generate click's variants by group_id, groups in the order they began", () => {
    const g1a = job({ group_id: "g1", created_at: "2026-12-01T10:00:01+00:00" });
    const g1b = job({ group_id: "g1", created_at: "2026-12-01T10:00:02+00:00" });
    const g2 = job({ group_id: "g2", created_at: "2026-12-01T10:00:05+00:00" });
    const loose = job({ group_id: null, created_at: "2026-12-01T10:00:03+00:00" });
    const groups = groupHistory([g2, g1b, loose, g1a]);
    expect(groups.map((g) => g.key)).toEqual(["g1", loose.id, "g2"]);
    expect(groups[0]?.jobs.map((j) => j.id)).toEqual([g1a.id, g1b.id]);
    expect(groupIndexOfJob(groups, g2.id)).toBe(2);
    expect(groupIndexOfJob(groups, null)).toBe(-1);
  });

  it("gives a group one status word: running or pending while any is, else done if any is", () => {
    const group = (...statuses: string[]) => ({ key: "g", jobs: statuses.map((s) => job({ status: s as never })) });
    expect(groupStatus(group("done", "running", "pending"))).toBe("running");
    expect(groupStatus(group("done", "pending"))).toBe("pending");
    expect(groupStatus(group("failed", "done"))).toBe("done");
    expect(groupStatus(group("failed", "cancelled"))).toBe("failed");
    expect(groupStatus(group("cancelled"))).toBe("cancelled");
  });

  it("measures run time from start to completion, and adds up cost", () => {
    const j = job({ status: "done", started_at: "2026-12-01T10:00:00+00:00", completed_at: "2026-12-01T10:00:02.500+00:00", cost_usd: 0.04 });
    expect(durationSeconds(j)).toBe(2.5);
    expect(durationSeconds(job())).toBeNull();
    expect(groupCost({ key: "g", jobs: [j, job({ cost_usd: 0.02 }), job({ cost_usd: null })] })).toBeCloseTo(0.06);
    expect(groupCost({ key: "g", jobs: [job()] })).toBeNull();
    expect(totalCost([j, job({ cost_usd: 0.01 })])).toBeCloseTo(0.05);
  });
});
