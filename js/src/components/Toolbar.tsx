// The toolbar: add nodes, undo/redo, fit view; the canvas's total cost, connection and save state.
import { Panel, useReactFlow, useStoreApi } from "@xyflow/react";
import { memo } from "react";
import { freeSpot } from "../state/graph";
import { totalCost } from "../state/history";
import { addImageNode, addPromptNode, redo, undo } from "../state/store";
import { useCanvas, useController } from "./context";
import { Icon, formatCost } from "./ui";

const SYNC_LABEL = { loading: "Loading…", saved: "Saved", pending: "Unsaved", saving: "Saving…", error: "Not saved" } as const;

export const Toolbar = memo(function Toolbar() {
  const controller = useController();
  const { store } = controller;
  const flow = useReactFlow();
  const flowStore = useStoreApi();
  const canUndo = useCanvas((s) => s.undo.past.length > 0);
  const canRedo = useCanvas((s) => s.undo.future.length > 0);
  const cost = useCanvas((s) => totalCost(Object.values(s.jobs).filter((j) => j.canvas_id === s.canvasId)));
  const connection = useCanvas((s) => s.connection);
  const transport = useCanvas((s) => s.transportKind);
  const syncState = useCanvas((s) => s.syncState);
  const syncError = useCanvas((s) => s.syncError);

  /** New nodes go near the top left of what is in view, beside (never over) the nodes already there. */
  const spot = (type: "prompt" | "image") => {
    const box = flowStore.getState().domNode?.getBoundingClientRect();
    if (!box) return freeSpot(store.getState().nodes, { x: 0, y: 0 }, type);
    const topLeft = flow.screenToFlowPosition({ x: box.left + 40, y: box.top + 80 });
    const bottomRight = flow.screenToFlowPosition({ x: box.right - 40, y: box.bottom - 40 });
    const columns = Math.floor((bottomRight.x - topLeft.x) / 340);
    const at = freeSpot(store.getState().nodes, { x: Math.round(topLeft.x), y: Math.round(topLeft.y) }, type, columns);
    if (at.x + 300 > bottomRight.x || at.y + 200 > bottomRight.y) {
      // No room in view: show where it went.
      // At once, not animated: whatever is clicked next (the new node's prompt) must not move under the pointer.
      void flow.setCenter(at.x + 150, at.y + 250, { zoom: flow.getZoom() });
    }
    return at;
  };

  return (
    <Panel position="top-left" className="ic-toolbar" data-testid="toolbar">
      <div className="ic-toolbar-group">
        <button type="button" className="ic-tool" data-testid="add-prompt-node" title="Add a prompt node (Shift+double-click the canvas)" onClick={() => addPromptNode(store, spot("prompt"))}>
          <Icon name="prompt" /> Prompt
        </button>
        <button type="button" className="ic-tool" data-testid="add-image-node" title="Add an image node (double-click the canvas)" onClick={() => addImageNode(store, spot("image"))}>
          <Icon name="image" /> Image
        </button>
      </div>
      <div className="ic-toolbar-group">
        <button type="button" className="ic-tool ic-tool-icon" data-testid="undo-button" title="Undo (Ctrl/Cmd+Z)" disabled={!canUndo} onClick={() => undo(store)}>
          <Icon name="undo" />
        </button>
        <button type="button" className="ic-tool ic-tool-icon" data-testid="redo-button" title="Redo (Ctrl/Cmd+Shift+Z)" disabled={!canRedo} onClick={() => redo(store)}>
          <Icon name="redo" />
        </button>
        <button type="button" className="ic-tool ic-tool-icon" data-testid="fit-view" title="Fit view" onClick={() => void flow.fitView({ padding: 0.15, maxZoom: 1, duration: 250 })}>
          <Icon name="fit" />
        </button>
      </div>
      <div className="ic-toolbar-group ic-toolbar-facts">
        <span className="ic-fact" title="What this canvas's generations cost" data-testid="canvas-cost">
          {formatCost(cost)}
        </span>
        <span className={`ic-fact ic-sync ic-sync-${syncState}`} data-testid="sync-state" title={syncError ?? undefined}>
          {SYNC_LABEL[syncState]}
        </span>
        <span
          className={`ic-dot ic-dot-${connection}`}
          data-testid="connection-state"
          data-state={connection}
          title={`${transport === "kernel" ? "Through the kernel" : "Server extension"}: ${connection === "open" ? "live" : connection === "connecting" ? "reconnecting…" : "closed"}`}
        />
      </div>
    </Panel>
  );
});
