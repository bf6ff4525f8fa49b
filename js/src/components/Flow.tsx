// The React Flow pane: the store's graph, edits and keyboard shortcuts, double-click to add, drop a result to refine.
import {
  type Connection,
  Controls,
  type Edge,
  MiniMap,
  ReactFlow,
  type Viewport,
  useReactFlow,
} from "@xyflow/react";
import { useCallback, useMemo, type DragEvent, type KeyboardEvent, type MouseEvent } from "react";
import { DRAG_TYPE } from "../nodes/ImageNode";
import { nodeTypes } from "../nodes/nodeTypes";
import { type FlowNode, canConnect, isImageNode, nodeById } from "../state/graph";
import {
  addImageNode,
  addPromptNode,
  connect,
  deleteNodes,
  onEdgesChange,
  onNodesChange,
  pasteClip,
  redo,
  selectionClip,
  setViewport,
  undo,
  type Clip,
} from "../state/store";
import { useCanvas, useController } from "./context";
import { Dots } from "./Dots";
import { Toolbar } from "./Toolbar";

const CLIPBOARD = Symbol.for("imagen-canvas.clipboard");

function clipboard(): { clip: Clip | null; pastes: number } {
  const holder = globalThis as unknown as Record<symbol, { clip: Clip | null; pastes: number } | undefined>;
  let box = holder[CLIPBOARD];
  if (!box) {
    box = { clip: null, pastes: 0 };
    holder[CLIPBOARD] = box;
  }
  return box;
}

function typingIn(target: EventTarget | null): boolean {
  if (!(target instanceof HTMLElement)) return false;
  return target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName);
}

const minimapColor = (node: FlowNode) => (node.type === "prompt" ? "var(--ic-prompt-accent)" : "var(--ic-image-accent)");
const proOptions = { hideAttribution: true };
const NODE_WIDTH = 300;
const MINIMAP_SIZE = { width: 160, height: 110 };
/**
 * Past this many nodes only those in view are in the DOM: panning 200 full node cards zoomed in cost ~75 ms of
 * CPU a frame here, ~30 ms with only the visible ones. Small canvases keep every node (and its state) mounted.
 */
const VIRTUALIZE_ABOVE = 60;

export function Flow({ initialViewport }: { initialViewport: Viewport | null }) {
  const controller = useController();
  const { store } = controller;
  const nodes = useCanvas((s) => s.nodes);
  const edges = useCanvas((s) => s.edges);
  const flow = useReactFlow();

  const handlers = useMemo(
    () => ({
      onNodesChange: (changes: Parameters<typeof onNodesChange>[1]) => onNodesChange(store, changes),
      onEdgesChange: (changes: Parameters<typeof onEdgesChange>[1]) => onEdgesChange(store, changes),
      onConnect: (connection: Connection) => void connect(store, connection),
      isValidConnection: (edge: Edge | Connection) => {
        const s = store.getState();
        return canConnect(s.nodes, s.edges, edge.source, edge.target);
      },
      onMoveEnd: (_: unknown, viewport: Viewport) => setViewport(store, viewport),
    }),
    [store],
  );

  const place = useCallback(
    (clientX: number, clientY: number) => {
      const p = flow.screenToFlowPosition({ x: clientX, y: clientY });
      return { x: Math.round(p.x - NODE_WIDTH / 2), y: Math.round(p.y - 40) };
    },
    [flow],
  );

  const onDoubleClick = useCallback(
    (e: MouseEvent<HTMLDivElement>) => {
      const target = e.target as HTMLElement;
      if (!target.classList.contains("react-flow__pane")) return;
      const at = place(e.clientX, e.clientY);
      if (e.shiftKey) addPromptNode(store, at);
      else addImageNode(store, at);
    },
    [place, store],
  );

  const onDragOver = useCallback((e: DragEvent<HTMLDivElement>) => {
    if (e.dataTransfer.types.includes(DRAG_TYPE)) {
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
    }
  }, []);

  const onDrop = useCallback(
    (e: DragEvent<HTMLDivElement>) => {
      const raw = e.dataTransfer.getData(DRAG_TYPE);
      if (!raw) return;
      e.preventDefault();
      let payload: { node_id?: string; job_id?: string };
      try {
        payload = JSON.parse(raw) as typeof payload;
      } catch {
        return;
      }
      const s = store.getState();
      const source = payload.node_id ? nodeById(s.nodes, payload.node_id) : undefined;
      if (!isImageNode(source)) return;
      const { provider, model, size, aspect_ratio, quality, negative_prompt } = source.data;
      addImageNode(store, place(e.clientX, e.clientY), { provider, model, size, aspect_ratio, quality, negative_prompt, prompt: source.data.prompt }, source.id);
    },
    [place, store],
  );

  const onKeyDown = useCallback(
    (e: KeyboardEvent<HTMLDivElement>) => {
      if (typingIn(e.target)) return;
      const mod = e.ctrlKey || e.metaKey;
      const key = e.key.toLowerCase();
      let handled = true;
      if (mod && key === "z" && !e.shiftKey) undo(store);
      else if (mod && ((key === "z" && e.shiftKey) || key === "y")) redo(store);
      else if (mod && key === "c") {
        const clip = selectionClip(store.getState());
        if (clip.nodes.length) {
          clipboard().clip = clip;
          clipboard().pastes = 0;
        } else handled = false;
      } else if (mod && key === "v") {
        const box = clipboard();
        if (box.clip) {
          box.pastes += 1;
          pasteClip(store, box.clip, { x: 40 * box.pastes, y: 40 * box.pastes });
        } else handled = false;
      } else if (mod && key === "d") {
        pasteClip(store, selectionClip(store.getState()), { x: 40, y: 40 });
      } else if (mod && key === "a") {
        store.setState((s) => ({ nodes: s.nodes.map((n) => (n.selected ? n : { ...n, selected: true })) }));
      } else if (!mod && (e.key === "Delete" || e.key === "Backspace")) {
        const s = store.getState();
        const ids = s.nodes.filter((n) => n.selected).map((n) => n.id);
        const edgeIds = s.edges.filter((edge) => edge.selected).map((edge) => edge.id);
        if (ids.length) deleteNodes(store, ids);
        // The focused node is gone: keep the focus in the canvas, so the next shortcut (undo) reaches it.
        e.currentTarget.focus({ preventScroll: true });
        if (edgeIds.length) onEdgesChange(store, edgeIds.map((id) => ({ id, type: "remove" as const })));
        handled = ids.length > 0 || edgeIds.length > 0;
      } else handled = false;
      if (handled) {
        e.preventDefault();
        e.stopPropagation();
      }
    },
    [store],
  );

  return (
    <div className="ic-flow" tabIndex={-1} data-lm-suppress-shortcuts="true" onDoubleClick={onDoubleClick} onDragOver={onDragOver} onDrop={onDrop} onKeyDown={onKeyDown}>
      <ReactFlow<FlowNode>
        nodes={nodes}
        edges={edges}
        nodeTypes={nodeTypes}
        onNodesChange={handlers.onNodesChange}
        onEdgesChange={handlers.onEdgesChange}
        onConnect={handlers.onConnect}
        isValidConnection={handlers.isValidConnection}
        onMoveEnd={handlers.onMoveEnd}
        defaultViewport={initialViewport ?? undefined}
        fitView={initialViewport === null}
        fitViewOptions={{ maxZoom: 1, padding: 0.15 }}
        minZoom={0.05}
        maxZoom={2.5}
        onlyRenderVisibleElements={nodes.length > VIRTUALIZE_ABOVE}
        zoomOnDoubleClick={false}
        deleteKeyCode={null}
        selectionKeyCode="Shift"
        multiSelectionKeyCode={["Meta", "Control"]}
        proOptions={proOptions}
        defaultEdgeOptions={{ type: "default" }}
      >
        <Dots />
        {nodes.length ? <MiniMap pannable zoomable nodeColor={minimapColor} nodeStrokeWidth={2} className="ic-minimap" style={MINIMAP_SIZE} /> : null}
        <Controls showInteractive={false} className="ic-controls" />
        <Toolbar />
      </ReactFlow>
      {nodes.length === 0 ? (
        <div className="ic-empty" data-testid="canvas-empty">
          <strong>An empty canvas</strong>
          <span>Double-click to add an image node, Shift+double-click for a prompt node, or use the toolbar.</span>
        </div>
      ) : null}
    </div>
  );
}
