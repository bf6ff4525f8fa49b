import { describe, expect, it } from "vitest";
import { addImageNode, addPromptNode, connect, createCanvasStore, deleteNodes, onNodesChange, redo, setCurrentJob, undo, updateNodeData } from "./store";
import type { FlowNode } from "./graph";
import { MERGE_WINDOW_MS } from "./undo";

const at = (x: number, y: number) => ({ x, y });

function imageData(store: ReturnType<typeof createCanvasStore>, id: string) {
  const node = store.getState().nodes.find((n) => n.id === id);
  if (node?.type !== "image") throw new Error("not an image node");
  return node.data;
}

describe("undo and redo", () => {
  it("undoes a burst of typing as one step, and a pause starts a new one", () => {
    const store = createCanvasStore("c");
    const id = addImageNode(store, at(0, 0));
    let t = 1000;
    for (const text of ["a", "a r", "a red", "a red fox"]) updateNodeData(store, id, { prompt: text }, (t += 100));
    updateNodeData(store, id, { prompt: "a red fox, snow" }, (t += MERGE_WINDOW_MS + 500));
    expect(imageData(store, id).prompt).toBe("a red fox, snow");
    undo(store);
    expect(imageData(store, id).prompt).toBe("a red fox");
    undo(store);
    expect(imageData(store, id).prompt).toBe("");
    redo(store);
    redo(store);
    expect(imageData(store, id).prompt).toBe("a red fox, snow");
  });

  it("does not merge typing in different fields", () => {
    const store = createCanvasStore("c");
    const id = addImageNode(store, at(0, 0));
    updateNodeData(store, id, { prompt: "fox" }, 1000);
    updateNodeData(store, id, { negative_prompt: "blur" }, 1100);
    undo(store);
    expect(imageData(store, id)).toMatchObject({ prompt: "fox", negative_prompt: null });
  });

  it("undoes a whole drag as one step, however long it lasts", () => {
    const store = createCanvasStore("c");
    const id = addImageNode(store, at(0, 0));
    for (let i = 1; i <= 30; i += 1) onNodesChange(store, [{ id, type: "position", position: at(i * 10, i * 5), dragging: true }]);
    onNodesChange(store, [{ id, type: "position", dragging: false }]);
    expect(store.getState().nodes[0]?.position).toEqual(at(300, 150));
    undo(store);
    expect(store.getState().nodes[0]?.position).toEqual(at(0, 0));
    redo(store);
    expect(store.getState().nodes[0]?.position).toEqual(at(300, 150));
  });

  it("makes two drags two steps", () => {
    const store = createCanvasStore("c");
    const id = addImageNode(store, at(0, 0));
    onNodesChange(store, [{ id, type: "position", position: at(10, 0), dragging: true }]);
    onNodesChange(store, [{ id, type: "position", dragging: false }]);
    onNodesChange(store, [{ id, type: "position", position: at(20, 0), dragging: true }]);
    onNodesChange(store, [{ id, type: "position", dragging: false }]);
    undo(store);
    expect(store.getState().nodes[0]?.position).toEqual(at(10, 0));
  });

  it("brings back a deleted node with its edges in one step", () => {
    const store = createCanvasStore("c");
    const p = addPromptNode(store, at(0, 0));
    const i = addImageNode(store, at(400, 0));
    connect(store, { source: p, target: i, sourceHandle: null, targetHandle: null });
    expect(store.getState().edges).toHaveLength(1);
    deleteNodes(store, [p]);
    expect(store.getState().nodes.map((n) => n.id)).toEqual([i]);
    expect(store.getState().edges).toHaveLength(0);
    undo(store);
    expect(store.getState().nodes.map((n) => n.id).sort()).toEqual([i, p].sort());
    expect(store.getState().edges).toHaveLength(1);
  });

  it("keeps a node's current result when its edits are undone (results are not graph edits)", () => {
    const store = createCanvasStore("c");
    const id = addImageNode(store, at(0, 0));
    updateNodeData(store, id, { prompt: "fox" }, 1000);
    setCurrentJob(store, id, "job-1");
    undo(store);
    expect(imageData(store, id)).toMatchObject({ prompt: "", current_job_id: "job-1" });
    expect(store.getState().undo.future).toHaveLength(1);
  });

  it("does not record selection or measured sizes", () => {
    const store = createCanvasStore("c");
    const id = addImageNode(store, at(0, 0));
    const steps = store.getState().undo.past.length;
    const revision = store.getState().docRevision;
    onNodesChange(store, [{ id, type: "select", selected: false }]);
    onNodesChange(store, [{ id, type: "dimensions", dimensions: { width: 300, height: 500 } }]);
    expect(store.getState().undo.past.length).toBe(steps);
    expect(store.getState().docRevision).toBe(revision);
    expect((store.getState().nodes[0] as FlowNode).measured).toEqual({ width: 300, height: 500 });
  });
});
