// The lightbox: one result full size (the only place full images load), arrows through the node's history, Esc closes.
import { memo, useEffect, useMemo, useRef, type KeyboardEvent } from "react";
import { createPortal } from "react-dom";
import type { Job } from "../api/types";
import { useImageSource } from "../images/use-image";
import { durationSeconds, groupHistory } from "../state/history";
import { setCurrentJob, updateNodeData } from "../state/store";
import { isImageNode, nodeById } from "../state/graph";
import { suppressShortcuts } from "./keys";
import { useCanvas, useController } from "./context";
import { Icon, formatCost, formatDuration, specLines } from "./ui";

export const Lightbox = memo(function Lightbox({ theme }: { theme: string }) {
  const lightbox = useCanvas((s) => s.lightbox);
  if (!lightbox) return null;
  return createPortal(<LightboxView nodeId={lightbox.nodeId} jobId={lightbox.jobId} theme={theme} />, document.body);
});

function LightboxView({ nodeId, jobId, theme }: { nodeId: string; jobId: string; theme: string }) {
  const controller = useController();
  const { store } = controller;
  const jobs = useCanvas((s) => s.nodeJobs[nodeId]);
  const currentJobId = useCanvas((s) => {
    const node = nodeById(s.nodes, nodeId);
    return isImageNode(node) ? node.data.current_job_id : null;
  });
  const ordered = useMemo(() => groupHistory(jobs ?? []).flatMap((g) => g.jobs), [jobs]);
  const index = ordered.findIndex((j) => j.id === jobId);
  const job: Job | undefined = ordered[index];
  const ref = useRef<HTMLDivElement>(null);
  const { src, failed, onError } = useImageSource(job?.status === "done" ? job.image : null, "full");

  useEffect(() => {
    ref.current?.focus();
    void controller.loadNodeHistory(nodeId);
  }, [controller, nodeId]);

  const close = () => store.setState({ lightbox: null });
  const go = (delta: number) => {
    const next = ordered[index + delta];
    if (next) store.setState({ lightbox: { nodeId, jobId: next.id } });
  };
  const onKeyDown = (e: KeyboardEvent<HTMLDivElement>) => {
    if (e.key === "Escape") close();
    else if (e.key === "ArrowLeft") go(-1);
    else if (e.key === "ArrowRight") go(1);
    else return;
    e.preventDefault();
    e.stopPropagation();
  };

  const seed = job?.image?.seed ?? null;
  return (
    <div
      className={`ic-root ic-portal ${theme}`}
      data-lm-suppress-shortcuts="true"
      data-p-suppress-shortcuts="true"
      onFocus={suppressShortcuts}
    >
      <div className="ic-lightbox" data-testid="lightbox" role="dialog" aria-modal="true" aria-label="Result" tabIndex={-1} ref={ref} onKeyDown={onKeyDown} onClick={(e) => e.target === e.currentTarget && close()}>
        <button type="button" className="ic-lightbox-close" data-testid="lightbox-close" title="Close (Esc)" onClick={close}>
          <Icon name="close" size={20} />
        </button>
        <button type="button" className="ic-lightbox-arrow ic-left" data-testid="lightbox-prev" title="Earlier (←)" disabled={index <= 0} onClick={() => go(-1)}>
          <Icon name="left" size={26} />
        </button>
        <figure className="ic-lightbox-figure">
          {src ? (
            <img className="ic-lightbox-image" data-testid="lightbox-image" src={src} alt={job?.prompt ?? ""} onError={onError} />
          ) : (
            <div className="ic-lightbox-empty">{job ? (job.status === "done" ? (failed ? "The image cannot be loaded." : "Loading…") : job.error ?? job.status) : "Not found"}</div>
          )}
        </figure>
        <button type="button" className="ic-lightbox-arrow ic-right" data-testid="lightbox-next" title="Later (→)" disabled={index < 0 || index >= ordered.length - 1} onClick={() => go(1)}>
          <Icon name="right" size={26} />
        </button>
        {job ? (
          <aside className="ic-lightbox-info">
            <div className="ic-lightbox-count">
              {index + 1} of {ordered.length}
              {job.id === currentJobId ? <span className="ic-badge">current</span> : null}
            </div>
            <p className="ic-lightbox-prompt" data-testid="lightbox-prompt">
              {job.prompt}
            </p>
            <dl className="ic-spec" data-testid="lightbox-spec">
              <dt>model</dt>
              <dd>
                {job.provider}/{job.model}
              </dd>
              <dt>seed</dt>
              <dd data-testid="lightbox-seed">{seed ?? "—"}</dd>
              {job.image ? (
                <>
                  <dt>pixels</dt>
                  <dd>
                    {job.image.width}×{job.image.height}
                  </dd>
                </>
              ) : null}
              {specLines(job.spec)
                .filter(([k]) => k !== "seed")
                .map(([k, v]) => (
                  <div key={k} className="ic-spec-pair">
                    <dt>{k}</dt>
                    <dd>{v}</dd>
                  </div>
                ))}
              <dt>time</dt>
              <dd>{formatDuration(durationSeconds(job))}</dd>
              <dt>cost</dt>
              <dd>{formatCost(job.cost_usd)}</dd>
            </dl>
            <div className="ic-lightbox-actions">
              <button
                type="button"
                className="ic-button"
                data-testid="use-seed"
                disabled={seed === null}
                title="Lock this seed on the node"
                onClick={() => seed !== null && updateNodeData(store, nodeId, { seed, seed_locked: true })}
              >
                Use seed
              </button>
              <button
                type="button"
                className="ic-button"
                data-testid="lightbox-use-as-current"
                disabled={job.id === currentJobId || job.status !== "done"}
                onClick={() => setCurrentJob(store, nodeId, job.id)}
              >
                Use as current
              </button>
              <button
                type="button"
                className="ic-button"
                data-testid="lightbox-compare"
                disabled={job.status !== "done" || !currentJobId || currentJobId === job.id}
                onClick={() => currentJobId && store.setState({ lightbox: null, compare: { nodeId, a: currentJobId, b: job.id, mode: "slider" } })}
              >
                Compare with current
              </button>
            </div>
          </aside>
        ) : null}
      </div>
    </div>
  );
}
