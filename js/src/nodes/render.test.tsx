import { ReactFlow, ReactFlowProvider } from "@xyflow/react";
import { renderToString } from "react-dom/server";
import { describe, expect, it } from "vitest";
import { ControllerContext } from "../components/context";
import { CanvasController } from "../controller";
import type { FlowNode } from "../state/graph";
import { defaultImageData, defaultPromptData } from "../state/graph";
import { setNodeError, upsertJobs } from "../state/store";
import { job } from "../tests/fixtures";
import type { Transport } from "../transport/transport";
import { nodeTypes } from "./nodeTypes";

const HOSTILE = `<img src=x onerror="window.pwned=1">`;

const transport = {
  kind: "server",
  connection: "open",
  request: () => new Promise(() => undefined),
  subscribe: () => () => undefined,
  onConnection: () => () => undefined,
  loadImage: () => ({ src: new Promise(() => undefined), fallback: null, release: () => undefined }),
  setStorageOrigin: () => undefined,
  dispose: () => undefined,
} as unknown as Transport;

function render(nodes: FlowNode[], prepare?: (c: CanvasController) => void): string {
  const controller = new CanvasController(transport, "canvas-1");
  controller.store.setState({ nodes });
  prepare?.(controller);
  // Server rendering reads a store's initial state (zustand's server snapshot): make it the prepared one.
  const prepared = controller.store.getState();
  controller.store.getInitialState = () => prepared;
  return renderToString(
    <ControllerContext.Provider value={controller}>
      <ReactFlowProvider initialNodes={nodes} initialEdges={[]} initialWidth={1200} initialHeight={800}>
        <ReactFlow nodes={nodes} edges={[]} nodeTypes={nodeTypes} width={1200} height={800} />
      </ReactFlowProvider>
    </ControllerContext.Provider>,
  );
}

const sized = { width: 300, height: 600 };

describe("nodes render text as text", () => {
  it("never turns a prompt into HTML", () => {
    const html = render([
      { id: "p", type: "prompt", position: { x: 0, y: 0 }, ...sized, data: { ...defaultPromptData(), text: HOSTILE, style_modifiers: [HOSTILE] } },
      { id: "i", type: "image", position: { x: 400, y: 0 }, ...sized, data: { ...defaultImageData("local", "local-v1"), prompt: HOSTILE } },
    ]);
    expect(html).toContain('data-testid="prompt-node"');
    expect(html).toContain('data-testid="image-node"');
    expect(html).not.toContain("<img src=x");
    expect(html).toContain("&lt;img src=x onerror=");
  });

  it("never turns an error into HTML, and gives the status as a bare word", () => {
    const failed = job({ node_id: "i", status: "failed", error: `provider said ${HOSTILE}`, group_id: "g" });
    const html = render(
      [{ id: "i", type: "image", position: { x: 0, y: 0 }, ...sized, data: { ...defaultImageData("local", "local-v1"), prompt: "x", current_job_id: failed.id } }],
      (c) => {
        upsertJobs(c.store, [failed]);
        setNodeError(c.store, "i", null);
      },
    );
    expect(html).toMatch(/data-testid="node-status"[^>]*>failed</);
    expect(html).toContain('data-testid="node-error"');
    expect(html).not.toContain("<img src=x");
  });
});
