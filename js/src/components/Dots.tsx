// The canvas's dot grid as one composited layer moved by transform: a pan moves pixels, nothing is repainted
// (React Flow's SVG <Background> repaints the whole pane on every frame of a pan, a third of its cost here).
import { type ReactFlowState, useStore } from "@xyflow/react";
import { memo } from "react";

const GAP = 20;

const selectTransform = (s: ReactFlowState) => s.transform;

export const Dots = memo(function Dots() {
  const [x, y, zoom] = useStore(selectTransform);
  // Below this the dots would be a grey haze: leave the plain background.
  if (zoom < 0.3) return null;
  const gap = GAP * zoom;
  const dx = ((x % gap) + gap) % gap;
  const dy = ((y % gap) + gap) % gap;
  const radius = Math.max(0.6, 1.1 * zoom);
  return (
    <div
      className="ic-dots"
      aria-hidden="true"
      style={{
        transform: `translate3d(${dx - gap}px, ${dy - gap}px, 0)`,
        backgroundSize: `${gap}px ${gap}px`,
        backgroundImage: `radial-gradient(circle, var(--ic-dot) ${radius}px, transparent ${radius + 0.5}px)`,
        inset: `0 -${2 * gap}px -${2 * gap}px 0`,
      }}
    />
  );
});
