// The view's controller and store, handed to every component through one React context.
import { createContext, useContext } from "react";
import { useStore } from "zustand";
import type { CanvasController } from "../controller";
import type { CanvasState } from "../state/store";

export const ControllerContext = createContext<CanvasController | null>(null);

export function useController(): CanvasController {
  const controller = useContext(ControllerContext);
  if (!controller) throw new Error("imagen-canvas: a component was rendered outside its canvas");
  return controller;
}

/** A narrow selection of the canvas store: the component re-renders only when the selected value changes. */
export function useCanvas<T>(selector: (state: CanvasState) => T): T {
  return useStore(useController().store, selector);
}
