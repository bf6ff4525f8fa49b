// Keyboard focus and shortcuts inside a notebook: the canvas keeps its keys from JupyterLab and Notebook 7.
import type { FocusEvent, KeyboardEvent, PointerEvent } from "react";

/**
 * The pane swallows its mousedown (d3-zoom), so clicking it would leave the focus where it was (a notebook
 * cell) and the canvas's shortcuts would go nowhere: keep the focus inside the canvas.
 */
export function keepFocus(e: PointerEvent<HTMLDivElement>): void {
  const root = e.currentTarget;
  const target = e.target as HTMLElement;
  if (target.closest("input, textarea, select, button, [contenteditable='true']")) return;
  const active = document.activeElement;
  if (!active || !root.contains(active) || active === document.body) {
    (root.querySelector<HTMLElement>(".ic-flow") ?? root).focus({ preventScroll: true });
  }
}

/**
 * Plain keys typed in the canvas are the canvas's: JupyterLab's command-mode shortcuts (d d deletes a cell,
 * a/b insert one) must not see them. Keys with Ctrl/Cmd/Alt that the canvas did not take (save, the command
 * palette) still reach JupyterLab.
 */
export function keepKeys(e: KeyboardEvent<HTMLDivElement>): void {
  if (!(e.ctrlKey || e.metaKey || e.altKey)) e.stopPropagation();
}

/**
 * Lumino (JupyterLab, Notebook 7) ignores its shortcuts for an element that has, or sits inside one that has,
 * `data-lm-suppress-shortcuts` — but only if the focused element does not itself match a shortcut's selector
 * first, which a focused button, select or React Flow node does (`.jp-mod-commandMode :focus`); and the app
 * may see the key before the canvas can stop it. So every element that takes the focus in the canvas is marked.
 */
export function suppressShortcuts(e: FocusEvent<HTMLElement>): void {
  const target = e.target as HTMLElement;
  if (!target.hasAttribute("data-lm-suppress-shortcuts")) {
    target.setAttribute("data-lm-suppress-shortcuts", "true");
    target.setAttribute("data-p-suppress-shortcuts", "true");
  }
}
