// Compare two results of a node: a slider over one image, or the two side by side.
import { memo, useEffect, useMemo, useRef, useState, type KeyboardEvent } from "react";
import { createPortal } from "react-dom";
import type { Job } from "../api/types";
import { useImageSource } from "../images/use-image";
import { groupHistory } from "../state/history";
import { suppressShortcuts } from "./keys";
import { useCanvas, useController } from "./context";
import { Icon } from "./ui";

export const Compare = memo(function Compare({ theme }: { theme: string }) {
  const compare = useCanvas((s) => s.compare);
  if (!compare) return null;
  return createPortal(<CompareView theme={theme} />, document.body);
});

function CompareView({ theme }: { theme: string }) {
  const { store } = useController();
  const compare = useCanvas((s) => s.compare);
  const jobs = useCanvas((s) => (compare ? s.nodeJobs[compare.nodeId] : undefined));
  const done = useMemo(() => groupHistory(jobs ?? []).flatMap((g) => g.jobs).filter((j) => j.status === "done" && j.image), [jobs]);
  const [split, setSplit] = useState(50);
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => ref.current?.focus(), []);
  if (!compare) return null;
  const a = done.find((j) => j.id === compare.a);
  const b = done.find((j) => j.id === compare.b);
  const close = () => store.setState({ compare: null });
  const set = (patch: Partial<typeof compare>) => store.setState({ compare: { ...compare, ...patch } });
  const onKeyDown = (e: KeyboardEvent<HTMLDivElement>) => {
    if (e.key === "Escape") {
      e.preventDefault();
      e.stopPropagation();
      close();
    }
  };
  return (
    <div className={`ic-root ic-portal ${theme}`} data-lm-suppress-shortcuts="true" data-p-suppress-shortcuts="true" onFocus={suppressShortcuts}>
      <div className="ic-lightbox ic-compare" data-testid="compare" role="dialog" aria-modal="true" aria-label="Compare results" tabIndex={-1} ref={ref} onKeyDown={onKeyDown}>
        <button type="button" className="ic-lightbox-close" title="Close (Esc)" onClick={close}>
          <Icon name="close" size={20} />
        </button>
        <div className="ic-compare-bar">
          <div className="ic-segmented" role="radiogroup" aria-label="Compare mode">
            <button type="button" role="radio" aria-checked={compare.mode === "slider"} className={compare.mode === "slider" ? "ic-on" : ""} data-testid="compare-slider-mode" onClick={() => set({ mode: "slider" })}>
              Slider
            </button>
            <button type="button" role="radio" aria-checked={compare.mode === "side"} className={compare.mode === "side" ? "ic-on" : ""} data-testid="compare-side-mode" onClick={() => set({ mode: "side" })}>
              Side by side
            </button>
          </div>
          <Picker label="A" jobs={done} value={compare.a} onChange={(id) => set({ a: id })} />
          <Picker label="B" jobs={done} value={compare.b} onChange={(id) => set({ b: id })} />
        </div>
        {compare.mode === "slider" ? (
          <div className="ic-compare-stage" data-testid="compare-stage">
            <div className="ic-compare-slider">
              <FullImage job={a} />
              <div className="ic-compare-top" style={{ clipPath: `inset(0 0 0 ${split}%)` }}>
                <FullImage job={b} />
              </div>
              <div className="ic-compare-divider" style={{ left: `${split}%` }} />
              <span className="ic-compare-tag ic-left">A · seed {a?.image?.seed ?? "—"}</span>
              <span className="ic-compare-tag ic-right">B · seed {b?.image?.seed ?? "—"}</span>
            </div>
            <input className="ic-compare-range" data-testid="compare-range" type="range" min={0} max={100} value={split} aria-label="Split" onChange={(e) => setSplit(Number(e.target.value))} />
          </div>
        ) : (
          <div className="ic-compare-side" data-testid="compare-stage">
            <figure>
              <FullImage job={a} />
              <figcaption>A · seed {a?.image?.seed ?? "—"}</figcaption>
            </figure>
            <figure>
              <FullImage job={b} />
              <figcaption>B · seed {b?.image?.seed ?? "—"}</figcaption>
            </figure>
          </div>
        )}
      </div>
    </div>
  );
}

function Picker({ label, jobs, value, onChange }: { label: string; jobs: Job[]; value: string; onChange: (id: string) => void }) {
  return (
    <label className="ic-control ic-inline">
      <span className="ic-label">{label}</span>
      <select className="ic-select" value={value} onChange={(e) => onChange(e.target.value)} data-testid={`compare-pick-${label.toLowerCase()}`}>
        {jobs.map((j, i) => (
          <option key={j.id} value={j.id}>
            #{i + 1} · seed {j.image?.seed ?? "—"} · {j.model}
          </option>
        ))}
      </select>
    </label>
  );
}

function FullImage({ job }: { job: Job | undefined }) {
  const { src, onError } = useImageSource(job?.image ?? null, "full");
  return src ? <img className="ic-compare-image" src={src} alt={job?.prompt ?? ""} onError={onError} draggable={false} /> : <div className="ic-lightbox-empty">Loading…</div>;
}
