// Small shared pieces: icons, the status pill, the progress bar, and how money and time are written.
import { memo, type ReactNode } from "react";
import type { JobStatus } from "../api/types";

const PATHS: Record<string, ReactNode> = {
  image: (
    <>
      <rect x="3" y="4" width="18" height="16" rx="2.5" />
      <circle cx="9" cy="10" r="1.8" />
      <path d="M21 16l-5-5-8 9" />
    </>
  ),
  prompt: (
    <>
      <path d="M4 6h16M4 11h16M4 16h10" />
    </>
  ),
  undo: <path d="M9 14L4 9l5-5M4 9h10a6 6 0 010 12h-3" />,
  redo: <path d="M15 14l5-5-5-5M20 9H10a6 6 0 000 12h3" />,
  fit: <path d="M4 9V4h5M20 9V4h-5M4 15v5h5M20 15v5h-5" />,
  play: <path d="M7 5l12 7-12 7z" />,
  stop: <rect x="6" y="6" width="12" height="12" rx="2" />,
  left: <path d="M15 5l-7 7 7 7" />,
  right: <path d="M9 5l7 7-7 7" />,
  close: <path d="M6 6l12 12M18 6L6 18" />,
  lock: (
    <>
      <rect x="5" y="11" width="14" height="9" rx="2" />
      <path d="M8 11V8a4 4 0 018 0v3" />
    </>
  ),
  unlock: (
    <>
      <rect x="5" y="11" width="14" height="9" rx="2" />
      <path d="M8 11V8a4 4 0 017.5-2" />
    </>
  ),
  compare: <path d="M12 3v18M5 7h4M5 12h4M5 17h4M15 7h4M15 12h4M15 17h4" />,
  history: <path d="M3 12a9 9 0 103-6.7M3 4v4h4M12 7v5l3 3" />,
  dice: (
    <>
      <rect x="4" y="4" width="16" height="16" rx="3" />
      <circle cx="9" cy="9" r="1.2" />
      <circle cx="15" cy="15" r="1.2" />
      <circle cx="15" cy="9" r="1.2" />
      <circle cx="9" cy="15" r="1.2" />
    </>
  ),
  warn: <path d="M12 4l9 16H3zM12 10v4M12 17v.5" />,
  plus: <path d="M12 5v14M5 12h14" />,
};

export const Icon = memo(function Icon({ name, size = 16 }: { name: keyof typeof PATHS | string; size?: number }) {
  return (
    <svg className="ic-icon" width={size} height={size} viewBox="0 0 24 24" aria-hidden="true" fill="none" stroke="currentColor" strokeWidth={1.8} strokeLinecap="round" strokeLinejoin="round">
      {PATHS[name]}
    </svg>
  );
});

export type NodeStatusWord = JobStatus | "idle";

export const StatusPill = memo(function StatusPill({ status }: { status: NodeStatusWord }) {
  return (
    <span className={`ic-pill ic-pill-${status}`} data-testid="node-status" data-status={status}>
      {status}
    </span>
  );
});

export const ProgressBar = memo(function ProgressBar({ progress }: { progress: number | null }) {
  const known = typeof progress === "number";
  const pct = known ? Math.round(Math.min(1, Math.max(0, progress)) * 100) : null;
  return (
    <div
      className={`ic-progress${known ? "" : " ic-progress-indeterminate"}`}
      data-testid="node-progress"
      role="progressbar"
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={pct ?? undefined}
    >
      <div className="ic-progress-fill" style={known ? { width: `${pct}%` } : undefined} />
    </div>
  );
});

export function formatCost(usd: number | null | undefined): string {
  if (usd === null || usd === undefined) return "—";
  if (usd === 0) return "$0.00";
  if (usd < 0.01) return `$${usd.toFixed(4)}`;
  return `$${usd.toFixed(2)}`;
}

export function formatDuration(seconds: number | null): string {
  if (seconds === null) return "—";
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 120) return `${Math.round(seconds)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

/** The spec fields of a job, as `key: value` lines for the history and the lightbox. */
export function specLines(spec: Record<string, unknown>): [string, string][] {
  const out: [string, string][] = [];
  for (const [key, value] of Object.entries(spec)) {
    if (value === null || value === undefined || key === "previous_image_id") continue;
    const text = Array.isArray(value) ? value.join(", ") : typeof value === "object" ? JSON.stringify(value) : String(value);
    if (text) out.push([key.replace(/_/g, " "), text]);
  }
  return out;
}
