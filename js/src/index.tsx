// The anywidget entry: render({model, el}) mounts one canvas view; its cleanup saves and lets go of everything.
import "@xyflow/react/dist/style.css";
import "./styles.css";
import { createRoot } from "react-dom/client";
import { App } from "./components/App";
import { CanvasView } from "./view";
import type { WidgetModel } from "./widget";

function render({ model, el }: { model: WidgetModel; el: HTMLElement }): () => void {
  // createRoot empties the element it is given: render into a child, so nothing else in `el` is lost.
  const container = document.createElement("div");
  container.className = "ic-host";
  el.appendChild(container);
  const root = createRoot(container);
  const view = new CanvasView(model);
  root.render(<App view={view} model={model} />);
  void view.start().catch((err: unknown) => console.error("imagen-canvas: the view did not start", err));
  return () => {
    root.unmount();
    container.remove();
    void view.dispose();
  };
}

export default { render };
