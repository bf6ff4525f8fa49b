// A stand-in for anywidget's model in unit tests: traits, change events, and custom messages both ways.
import type { WidgetModel, WidgetTraits } from "../widget";

type Handler = (...args: unknown[]) => void;

export class FakeWidgetModel {
  readonly traits: WidgetTraits;
  /** Every message the view sent (`model.send`), oldest first. */
  readonly sent: Record<string, unknown>[] = [];
  saves = 0;
  private readonly handlers = new Map<string, Set<Handler>>();

  constructor(traits: Partial<WidgetTraits> = {}) {
    this.traits = { canvas_id: "canvas-1", height: 600, transport: "", status: "", ...traits };
  }

  get<K extends keyof WidgetTraits>(key: K): WidgetTraits[K] {
    return this.traits[key];
  }

  set<K extends keyof WidgetTraits>(key: K, value: WidgetTraits[K]): void {
    this.traits[key] = value;
    this.emit(`change:${String(key)}`);
  }

  save_changes(): void {
    this.saves += 1;
  }

  on(event: string, handler: Handler): void {
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    set.add(handler);
  }

  off(event?: string | null, handler?: Handler | null): void {
    if (!event) {
      this.handlers.clear();
      return;
    }
    if (!handler) this.handlers.delete(event);
    else this.handlers.get(event)?.delete(handler);
  }

  send(content: Record<string, unknown>): void {
    this.sent.push(content);
  }

  /** The kernel sends a custom message to the view. */
  receive(content: unknown, buffers: DataView[] = []): void {
    this.emit("msg:custom", content, buffers);
  }

  listeners(event: string): number {
    return this.handlers.get(event)?.size ?? 0;
  }

  private emit(event: string, ...args: unknown[]): void {
    for (const handler of [...(this.handlers.get(event) ?? [])]) handler(...args);
  }

  asModel(): WidgetModel {
    return this as unknown as WidgetModel;
  }
}
