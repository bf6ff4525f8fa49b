// One widget view's life: choose the transport, report it (and what is missing) to Python, run the controller.
import { CanvasController } from "./controller";
import { uuidV4 } from "./state/graph";
import { type Choice, chooseTransport } from "./transport/choose";
import { KernelTransport } from "./transport/kernel";
import { ServerTransport } from "./transport/server";
import { ApiError, Listeners } from "./transport/transport";
import type { WidgetModel } from "./widget";

export type ViewPhase = "choosing" | "ready" | "unavailable";

export interface ViewState {
  phase: ViewPhase;
  controller: CanvasController | null;
  message: string | null;
}

/** How long the kernel gets to answer the ready handshake before the view says it is missing. */
const KERNEL_ANSWER_MS = 10000;

export class CanvasView {
  state: ViewState = { phase: "choosing", controller: null, message: null };
  readonly changes = new Listeners<ViewState>();
  readonly viewId = uuidV4();
  private choice: Choice | null = null;
  private disposed = false;
  private readonly onCanvasId = () => void this.restart();
  private readonly onPageHide = () => void this.state.controller?.sync.flush(true).catch(() => undefined);
  private readonly onVisibility = () => {
    if (document.visibilityState === "hidden") this.onPageHide();
    else if (this.choice?.transport instanceof ServerTransport) this.choice.transport.nudge();
  };
  private readonly onOnline = () => {
    if (this.choice?.transport instanceof ServerTransport) this.choice.transport.nudge();
  };

  constructor(private readonly model: WidgetModel) {}

  async start(): Promise<void> {
    this.model.on("change:canvas_id", this.onCanvasId);
    window.addEventListener("pagehide", this.onPageHide);
    window.addEventListener("beforeunload", this.onPageHide);
    window.addEventListener("online", this.onOnline);
    document.addEventListener("visibilitychange", this.onVisibility);
    this.choice = await chooseTransport(this.model, this.viewId);
    if (this.disposed) {
      this.choice.transport.dispose();
      return;
    }
    this.model.set("transport", this.choice.transport.kind);
    this.model.save_changes();
    await this.run();
  }

  private canvasId(): string {
    let id = this.model.get("canvas_id");
    if (typeof id !== "string" || !id) {
      id = uuidV4();
      this.model.set("canvas_id", id);
      this.model.save_changes();
    }
    return id;
  }

  private async run(): Promise<void> {
    const choice = this.choice;
    if (!choice) return;
    const transport = choice.transport;
    if (transport instanceof KernelTransport && !(await this.kernelAnswers(transport))) {
      const message =
        `No imagen backend: ${choice.serverMissing ?? "the server extension is missing"}, and the kernel does not answer the canvas. ` +
        "Install imagen-canvas-server and restart Jupyter, or make sure imagen-canvas is installed in this kernel and re-run the cell.";
      this.report("unavailable", null, message);
      // A kernel that answers later (it was busy running other cells) still brings the canvas up.
      while (!this.disposed && !(await this.kernelAnswers(transport))) {
        await new Promise((r) => setTimeout(r, KERNEL_ANSWER_MS / 2));
      }
      if (this.disposed) return;
    }
    const controller = new CanvasController(transport, this.canvasId());
    this.report("choosing", controller, null);
    const status = await controller.start();
    if (this.disposed || this.state.controller !== controller) return;
    const phase = controller.store.getState().phase === "ready" ? "ready" : "unavailable";
    this.report(phase, controller, status === "ready" ? null : status);
  }

  /** Start the canvas again (after the backend could not load it). */
  async retry(): Promise<void> {
    const old = this.state.controller;
    this.report("choosing", null, null);
    if (old) await old.dispose();
    if (!this.disposed) await this.run();
  }

  /** Whether the kernel answers: its first event after `ready`, or any answer to `GET health`, says so. */
  private async kernelAnswers(transport: KernelTransport): Promise<boolean> {
    const heard = transport.ready.then(() => true);
    const health = transport.request("GET", "health", { timeoutMs: KERNEL_ANSWER_MS }).then(
      () => true,
      (err: unknown) => err instanceof ApiError && err.status > 0,
    );
    return Promise.race([heard, health]);
  }

  private async restart(): Promise<void> {
    const old = this.state.controller;
    if (old && old.canvasId === this.model.get("canvas_id")) return;
    this.report("choosing", null, null);
    if (old) await old.dispose();
    if (!this.disposed) await this.run();
  }

  private report(phase: ViewPhase, controller: CanvasController | null, message: string | null): void {
    this.state = { phase, controller, message };
    this.changes.emit(this.state);
    if (phase !== "choosing") {
      const status = message ?? "ready";
      if (this.model.get("status") !== status) {
        this.model.set("status", status);
        this.model.save_changes();
      }
    }
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.model.off("change:canvas_id", this.onCanvasId);
    window.removeEventListener("pagehide", this.onPageHide);
    window.removeEventListener("beforeunload", this.onPageHide);
    window.removeEventListener("online", this.onOnline);
    document.removeEventListener("visibilitychange", this.onVisibility);
    const controller = this.state.controller;
    if (controller) await controller.dispose();
    this.choice?.transport.dispose();
  }
}
