// The widget's root: theme and height, what is missing when the backend is, and the canvas once it is loaded.
import { ReactFlowProvider } from "@xyflow/react";
import { Component, useCallback, useEffect, useRef, useState, useSyncExternalStore, type ErrorInfo, type PointerEvent, type ReactNode } from "react";
import type { CanvasView, ViewState } from "../view";
import type { WidgetModel } from "../widget";
import { Compare } from "./Compare";
import { ControllerContext, useCanvas } from "./context";
import { Flow } from "./Flow";
import { keepFocus, keepKeys, suppressShortcuts } from "./keys";
import { Lightbox } from "./Lightbox";
import { Notice } from "./Notice";

const MIN_HEIGHT = 240;

function currentTheme(): "ic-dark" | "ic-light" {
  const body = document.body;
  const jp = body.dataset["jpThemeLight"];
  if (jp === "false") return "ic-dark";
  if (jp === "true") return "ic-light";
  if (body.classList.contains("vscode-dark") || body.classList.contains("vscode-high-contrast")) return "ic-dark";
  if (body.classList.contains("vscode-light")) return "ic-light";
  return window.matchMedia?.("(prefers-color-scheme: dark)").matches ? "ic-dark" : "ic-light";
}

/** JupyterLab's light/dark theme, followed live as the user switches it. */
function useTheme(): "ic-dark" | "ic-light" {
  const [theme, setTheme] = useState(currentTheme);
  useEffect(() => {
    const observer = new MutationObserver(() => setTheme(currentTheme()));
    observer.observe(document.body, { attributes: true, attributeFilter: ["data-jp-theme-light", "data-jp-theme-name", "class"] });
    return () => observer.disconnect();
  }, []);
  return theme;
}

function useTrait<T>(model: WidgetModel, name: "height" | "canvas_id"): T {
  return useSyncExternalStore(
    (notify) => {
      model.on(`change:${name}`, notify);
      return () => model.off(`change:${name}`, notify);
    },
    () => model.get(name) as T,
  );
}

export function App({ view, model }: { view: CanvasView; model: WidgetModel }) {
  const state = useSyncExternalStore(
    (notify) => view.changes.add(notify),
    () => view.state,
  );
  const theme = useTheme();
  const height = useTrait<number>(model, "height");
  const [dragHeight, setDragHeight] = useState<number | null>(null);
  const shown = Math.max(MIN_HEIGHT, dragHeight ?? (typeof height === "number" && height > 0 ? height : 600));

  return (
    <div
      className={`ic-root ${theme}`}
      data-testid="imagen-canvas"
      data-phase={state.phase}
      data-lm-suppress-shortcuts="true"
      data-p-suppress-shortcuts="true"
      tabIndex={0}
      style={{ height: shown }}
      onPointerDownCapture={keepFocus}
      onKeyDown={keepKeys}
      onFocus={suppressShortcuts}
    >
      <ErrorBoundary>
        <Body state={state} theme={theme} onRetry={() => void view.retry()} />
      </ErrorBoundary>
      <ResizeHandle
        height={shown}
        onDrag={setDragHeight}
        onDone={(h) => {
          setDragHeight(null);
          model.set("height", Math.round(h));
          model.save_changes();
        }}
      />
    </div>
  );
}

function Body({ state, theme, onRetry }: { state: ViewState; theme: string; onRetry: () => void }) {
  const { controller, phase, message } = state;
  if (!controller || (phase === "choosing" && !controller)) {
    return phase === "unavailable" ? <Missing message={message} /> : <Loading text="Connecting to imagen…" />;
  }
  return (
    <ControllerContext.Provider value={controller}>
      <Loaded phase={phase} message={message} theme={theme} onRetry={onRetry} />
    </ControllerContext.Provider>
  );
}

function Loaded({ phase, message, theme, onRetry }: { phase: ViewState["phase"]; message: string | null; theme: string; onRetry: () => void }) {
  const syncState = useCanvas((s) => s.syncState);
  const storePhase = useCanvas((s) => s.phase);
  const viewport = useCanvas((s) => s.viewport);
  const nodeCount = useCanvas((s) => s.nodes.length);
  const initial = useRef<{ x: number; y: number; zoom: number } | null | undefined>(undefined);
  if (storePhase === "unavailable" || (phase === "unavailable" && syncState === "loading")) {
    // The canvas could not be loaded: editing an empty stand-in would lose the edits, so say so and offer a retry.
    return <Missing message={message} onRetry={onRetry} />;
  }
  if (storePhase === "starting" || syncState === "loading") return <Loading text="Loading the canvas…" />;
  if (initial.current === undefined) {
    const saved = viewport.x !== 0 || viewport.y !== 0 || viewport.zoom !== 1;
    initial.current = saved ? viewport : nodeCount ? null : { x: 0, y: 0, zoom: 1 };
  }
  return (
    <ReactFlowProvider>
      {message ? (
        <div className="ic-banner" data-testid="canvas-banner" role="status">
          {message}
        </div>
      ) : null}
      <Flow initialViewport={initial.current} />
      <Notice />
      <Lightbox theme={theme} />
      <Compare theme={theme} />
    </ReactFlowProvider>
  );
}

function Loading({ text }: { text: string }) {
  return (
    <div className="ic-center" data-testid="canvas-loading">
      <div className="ic-spinner" aria-hidden="true" />
      <span>{text}</span>
    </div>
  );
}

function Missing({ message, onRetry }: { message: string | null; onRetry?: () => void }) {
  return (
    <div className="ic-center">
      <div className="ic-missing" data-testid="canvas-missing" role="alert">
        <strong>The imagen canvas cannot start</strong>
        <p>{message ?? "The imagen backend is not reachable."}</p>
        {onRetry ? (
          <button type="button" className="ic-button" data-testid="canvas-retry" onClick={onRetry}>
            Try again
          </button>
        ) : null}
      </div>
    </div>
  );
}

function ResizeHandle({ height, onDrag, onDone }: { height: number; onDrag: (h: number) => void; onDone: (h: number) => void }) {
  const start = useRef<{ y: number; h: number; last: number } | null>(null);
  const down = useCallback(
    (e: PointerEvent<HTMLDivElement>) => {
      e.preventDefault();
      (e.target as HTMLElement).setPointerCapture(e.pointerId);
      start.current = { y: e.clientY, h: height, last: height };
    },
    [height],
  );
  const move = (e: PointerEvent<HTMLDivElement>) => {
    if (!start.current) return;
    const h = Math.max(MIN_HEIGHT, start.current.h + e.clientY - start.current.y);
    start.current.last = h;
    onDrag(h);
  };
  const up = () => {
    if (!start.current) return;
    const h = start.current.last;
    start.current = null;
    onDone(h);
  };
  return <div className="ic-resize" title="Drag to resize" onPointerDown={down} onPointerMove={move} onPointerUp={up} onPointerCancel={up} />;
}

class ErrorBoundary extends Component<{ children: ReactNode }, { error: Error | null }> {
  override state = { error: null as Error | null };

  static getDerivedStateFromError(error: Error) {
    return { error };
  }

  override componentDidCatch(error: Error, info: ErrorInfo) {
    console.error("imagen-canvas crashed", error, info.componentStack);
  }

  override render() {
    if (this.state.error) {
      return <Missing message={`The canvas failed: ${this.state.error.message}. Re-run the cell to reload it.`} />;
    }
    return this.props.children;
  }
}
