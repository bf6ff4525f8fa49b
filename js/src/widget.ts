// The widget model's traits (docs/api.md, "Widget traits") and the slice of anywidget's model the canvas uses.
import type { AnyModel } from "@anywidget/types";

export interface WidgetTraits {
  canvas_id: string;
  height: number;
  transport: string;
  status: string;
  [key: string]: unknown;
}

export type WidgetModel = AnyModel<WidgetTraits>;
