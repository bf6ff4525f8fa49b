// The image node: its spec, Generate/Cancel, live status, the result (or a grid of variants) and its history.
import { Handle, type NodeProps, Position, useStore as useFlowStore } from "@xyflow/react";
import { memo, useCallback, useMemo, type DragEvent, type KeyboardEvent } from "react";
import type { ImageNodeData, Job } from "../api/types";
import { useCanvas, useController } from "../components/context";
import { Icon, ProgressBar, StatusPill, formatCost, formatDuration, type NodeStatusWord } from "../components/ui";
import { useImageSource } from "../images/use-image";
import { type ImageFlowNode, imageSource, isImageNode, nodeById, promptSources } from "../state/graph";
import { durationSeconds, groupCost, groupHistory, groupIndexOfJob, groupStatus, isActive } from "../state/history";
import { updateNodeData, setCurrentJob } from "../state/store";
import { ImageSettings } from "./ImageSettings";

export const SIMPLE_ZOOM = 0.35;

const CELL_TEXT: Record<string, string> = {
  pending: "Queued…",
  running: "Generating…",
  done: "Loading…",
  failed: "Failed",
  cancelled: "Cancelled",
  unavailable: "The image cannot be loaded",
};
export const DRAG_TYPE = "application/x-imagen-result";

const zoomedOut = (s: { transform: [number, number, number] }) => s.transform[2] < SIMPLE_ZOOM;

function ImageNodeView({ id, selected }: NodeProps<ImageFlowNode>) {
  const controller = useController();
  const data = useCanvas((s) => {
    const node = nodeById(s.nodes, id);
    return isImageNode(node) ? node.data : null;
  });
  const jobs = useCanvas((s) => s.nodeJobs[id]);
  const viewing = useCanvas((s) => s.viewing[id]);
  const error = useCanvas((s) => s.nodeErrors[id]);
  const submitting = useCanvas((s) => s.submitting[id] === true);
  const simple = useFlowStore(zoomedOut);

  const groups = useMemo(() => groupHistory(jobs ?? []), [jobs]);
  const currentJobId = data?.current_job_id ?? null;
  const currentIndex = groupIndexOfJob(groups, currentJobId);
  const viewIndex = viewing ? groups.findIndex((g) => g.key === viewing) : currentIndex >= 0 ? currentIndex : groups.length - 1;
  const group = viewIndex >= 0 ? groups[viewIndex] : undefined;
  const shown: Job | undefined = group ? (group.jobs.find((j) => j.id === currentJobId) ?? group.jobs[0]) : undefined;
  // While Generate's POSTs are out the node already says pending: the jobs exist a moment later.
  const status: NodeStatusWord = submitting && !viewing ? "pending" : group ? groupStatus(group) : "idle";
  const message = useCanvas((s) => (shown ? s.jobMessages[shown.id] : undefined));

  if (!data) return null;
  if (simple) return <SimpleImageNode status={status} job={shown} label={data.model} selected={!!selected} />;

  const active = group ? group.jobs.some(isActive) : false;
  const progress = group && status === "running" ? averageProgress(group.jobs) : null;
  const waiting = status === "pending" ? group?.jobs.find((j) => j.waiting_for_worker)?.waiting_for_worker : null;
  const failedError = group && (status === "failed" || status === "cancelled") ? group.jobs.find((j) => j.error)?.error : null;
  const errorText = error ?? failedError ?? null;
  const isCurrent = viewIndex === currentIndex;
  const done = group?.jobs.filter((j) => j.status === "done") ?? [];
  const seconds = shown ? durationSeconds(shown) : null;

  const step = (delta: number) => {
    const next = groups[viewIndex + delta];
    if (!next) return;
    controller.store.setState((s) => {
      const viewingNext = { ...s.viewing };
      if (viewIndex + delta === currentIndex) delete viewingNext[id];
      else viewingNext[id] = next.key;
      return { viewing: viewingNext };
    });
  };

  return (
    <div className={`ic-node ic-image-node${selected ? " ic-selected" : ""}`} data-testid="image-node" data-node-id={id} data-status={status}>
      <Handle type="target" position={Position.Left} className="ic-handle" />
      <header className="ic-node-head">
        <span className="ic-node-kind">
          <Icon name="image" size={14} /> Image
        </span>
        <StatusPill status={status} />
      </header>
      <PromptField id={id} data={data} />
      <ImageSettings id={id} data={data} />
      <ResultView
        nodeId={id}
        jobs={group?.jobs ?? []}
        shown={shown}
        status={status}
        progress={progress}
        waiting={waiting ?? null}
        message={message ?? null}
      />
      {errorText ? (
        <div className="ic-error" data-testid="node-error" role="alert">
          {errorText}
        </div>
      ) : null}
      <div className="ic-meta">
        <div className="ic-history-nav">
          <button type="button" className="ic-icon-button nodrag" data-testid="history-prev" title="Earlier generation" disabled={viewIndex <= 0} onClick={() => step(-1)}>
            <Icon name="left" size={14} />
          </button>
          <span className="ic-history-pos" data-testid="history-position">
            {groups.length ? `${viewIndex + 1} / ${groups.length}` : "0 / 0"}
          </span>
          <button type="button" className="ic-icon-button nodrag" data-testid="history-next" title="Later generation" disabled={viewIndex < 0 || viewIndex >= groups.length - 1} onClick={() => step(1)}>
            <Icon name="right" size={14} />
          </button>
        </div>
        <div className="ic-facts">
          {shown?.image?.seed !== undefined && shown?.image?.seed !== null ? (
            <span title="The seed that made this image" data-testid="node-seed">seed {shown.image.seed}</span>
          ) : null}
          {status === "done" || status === "failed" ? <span title="Run time">{formatDuration(seconds)}</span> : null}
          {group && (status === "done" || groupCost(group) !== null) ? <span title="Cost" data-testid="node-cost">{formatCost(groupCost(group))}</span> : null}
        </div>
      </div>
      <div className="ic-actions">
        {active ? (
          <button type="button" className="ic-button ic-button-danger nodrag" data-testid="cancel-button" onClick={() => void controller.cancel(id)}>
            <Icon name="stop" size={13} /> Cancel
          </button>
        ) : null}
        {!isCurrent && group ? (
          <button type="button" className="ic-button nodrag" data-testid="use-as-current" onClick={() => shown && setCurrentJob(controller.store, id, shown.id)}>
            Use as current
          </button>
        ) : null}
        {done.length >= 1 && groups.length + done.length > 2 ? (
          <button type="button" className="ic-button ic-button-ghost nodrag" title="Compare two results, side by side or with a slider" data-testid="compare-button" onClick={() => openCompare(controller, id, shown)}>
            <Icon name="compare" size={14} /> Compare
          </button>
        ) : null}
        <button
          type="button"
          className="ic-button ic-button-primary nodrag"
          data-testid="generate-button"
          disabled={submitting}
          title="Generate (Ctrl/Cmd+Enter)"
          onClick={() => void controller.generate(id)}
        >
          <Icon name="play" size={12} /> {groups.length ? "Regenerate" : "Generate"}
        </button>
      </div>
      <Handle type="source" position={Position.Right} className="ic-handle" />
    </div>
  );
}

function averageProgress(jobs: readonly Job[]): number | null {
  const values = jobs.filter((j) => j.status === "running" && typeof j.progress === "number").map((j) => j.progress as number);
  if (!values.length) return null;
  return values.reduce((a, b) => a + b, 0) / values.length;
}

function openCompare(controller: ReturnType<typeof useController>, nodeId: string, shown: Job | undefined) {
  const state = controller.store.getState();
  const done = (state.nodeJobs[nodeId] ?? []).filter((j) => j.status === "done" && j.image);
  if (done.length < 2) return;
  const a = shown && shown.status === "done" ? shown : done[done.length - 1];
  const b = [...done].reverse().find((j) => j.id !== a?.id);
  if (!a || !b) return;
  controller.store.setState({ compare: { nodeId, a: b.id, b: a.id, mode: "slider" } });
}

/** The node's own prompt, or the connected prompt nodes' text (read-only here) when any feeds it. */
const PromptField = memo(function PromptField({ id, data }: { id: string; data: ImageNodeData }) {
  const controller = useController();
  const incoming = useCanvas((s) => {
    const sources = promptSources(s.nodes, s.edges, id);
    return sources.length ? sources.map((n) => n.data.text.trim()).filter(Boolean).join(", ") : null;
  });
  const refinesFrom = useCanvas((s) => imageSource(s.nodes, s.edges, id)?.id ?? null);
  const onKeyDown = useCallback(
    (e: KeyboardEvent<HTMLTextAreaElement>) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        e.stopPropagation();
        void controller.generate(id);
      }
    },
    [controller, id],
  );
  return (
    <div className="ic-field">
      {incoming !== null ? (
        <div className="ic-linked-prompt" data-testid="linked-prompt" title="From the connected prompt node">
          <span className="ic-label">Prompt from the connected node</span>
          <span className="ic-linked-text">{incoming || "(the prompt node is empty)"}</span>
        </div>
      ) : (
        <textarea
          className="ic-textarea nodrag nowheel"
          data-testid="prompt-input"
          placeholder="Describe the image…  (Ctrl/Cmd+Enter generates)"
          rows={3}
          value={data.prompt}
          onChange={(e) => updateNodeData(controller.store, id, { prompt: e.target.value })}
          onKeyDown={onKeyDown}
        />
      )}
      {refinesFrom ? <div className="ic-hint" data-testid="refine-hint">Refines the connected image</div> : null}
    </div>
  );
});

const ResultView = memo(function ResultView(props: {
  nodeId: string;
  jobs: Job[];
  shown: Job | undefined;
  status: NodeStatusWord;
  progress: number | null;
  waiting: string | null;
  message: string | null;
}) {
  const { nodeId, jobs, shown, status, progress, waiting, message } = props;
  const controller = useController();
  const grid = jobs.length > 1;
  const open = (job: Job) => controller.store.setState({ lightbox: { nodeId, jobId: job.id } });
  const pick = (job: Job) => {
    if (job.id === shown?.id) open(job);
    else setCurrentJob(controller.store, nodeId, job.id);
  };
  return (
    <div className={`ic-result${grid ? " ic-result-grid" : ""}`} data-testid="node-result">
      {jobs.length === 0 ? (
        <div className={`ic-placeholder${status === "pending" ? " ic-shimmer" : ""}`}>
          <Icon name="image" size={28} />
          <span>{status === "pending" ? "Submitting…" : "No image yet"}</span>
        </div>
      ) : grid ? (
        jobs.map((job) => (
          <ResultCell key={job.id} nodeId={nodeId} job={job} selected={job.id === shown?.id} onClick={() => pick(job)} />
        ))
      ) : shown ? (
        <ResultCell nodeId={nodeId} job={shown} selected onClick={() => open(shown)} />
      ) : null}
      {status === "running" ? (
        <div className="ic-overlay-bottom">
          <ProgressBar progress={progress} />
          {message ? <span className="ic-progress-text">{message}</span> : null}
        </div>
      ) : null}
      {waiting ? (
        <div className="ic-waiting" data-testid="node-waiting">
          <Icon name="warn" size={13} /> Waiting for a worker: {waiting}
        </div>
      ) : null}
    </div>
  );
});

const ResultCell = memo(function ResultCell({ nodeId, job, selected, onClick }: { nodeId: string; job: Job; selected: boolean; onClick: () => void }) {
  const controller = useController();
  const image = job.status === "done" ? job.image : null;
  const { src, failed, onError } = useImageSource(image, "thumbnail");
  const onDragStart = (e: DragEvent<HTMLImageElement>) => {
    e.dataTransfer.setData(DRAG_TYPE, JSON.stringify({ node_id: nodeId, job_id: job.id }));
    e.dataTransfer.effectAllowed = "copy";
    if (!selected) setCurrentJob(controller.store, nodeId, job.id);
  };
  return (
    <div className={`ic-cell ic-cell-${job.status}${selected ? " ic-cell-selected" : ""}`}>
      {src ? (
        <img
          className="ic-thumb nodrag"
          data-testid={selected ? "node-thumbnail" : "node-variant"}
          src={src}
          alt={job.prompt}
          title={selected ? "Open (drag onto the canvas to refine)" : "Pick this variant"}
          draggable
          decoding="async"
          width={image?.width}
          height={image?.height}
          onError={onError}
          onClick={onClick}
          onDragStart={onDragStart}
        />
      ) : (
        <div className={`ic-cell-state${job.status === "pending" || job.status === "running" ? " ic-shimmer" : ""}`}>
          {job.status === "failed" || job.status === "cancelled" || failed ? <Icon name={job.status === "cancelled" ? "stop" : "warn"} size={20} /> : null}
          <span>
            {CELL_TEXT[job.status === "done" && failed ? "unavailable" : job.status]}
            {job.status === "running" && typeof job.progress === "number" ? ` ${Math.round(job.progress * 100)}%` : ""}
          </span>
        </div>
      )}
    </div>
  );
});

/** Far out, a node is a box: its status colour and its thumbnail, nothing to edit. */
const SimpleImageNode = memo(function SimpleImageNode({ status, job, label, selected }: { status: NodeStatusWord; job: Job | undefined; label: string; selected: boolean }) {
  const image = job?.status === "done" ? job.image : null;
  const { src, onError } = useImageSource(image, "thumbnail");
  return (
    <div className={`ic-node ic-simple ic-simple-${status}${selected ? " ic-selected" : ""}`} data-testid="image-node" data-status={status}>
      <Handle type="target" position={Position.Left} className="ic-handle" />
      {src ? <img className="ic-thumb" data-testid="node-thumbnail" src={src} alt="" decoding="async" onError={onError} /> : <div className="ic-simple-label">{label}</div>}
      <StatusPill status={status} />
      <Handle type="source" position={Position.Right} className="ic-handle" />
    </div>
  );
});

export const ImageNode = memo(ImageNodeView);
