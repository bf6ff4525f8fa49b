// An image node's spec fields, offered as the server's capability table says the chosen model accepts them.
import { memo, useState } from "react";
import type { ImageNodeData, ModelCapabilities, Provider } from "../api/types";
import { useCanvas, useController } from "../components/context";
import { Icon } from "../components/ui";
import { findModel } from "../state/generate";
import { updateNodeData } from "../state/store";

/** Sizes offered when a model takes any size (its `sizes` list is empty), up to its `max_side`. */
const FREE_SIZES = ["512x512", "768x768", "1024x1024", "1024x1536", "1536x1024", "2048x2048"];

export function sizeChoices(model: ModelCapabilities | null): string[] {
  if (!model) return [];
  if (model.sizes.length) return model.sizes;
  const max = model.max_side ?? 2048;
  return FREE_SIZES.filter((s) => s.split("x").every((side) => Number(side) <= max));
}

/** One line saying what the collapsed settings are set to. */
export function settingsSummary(data: ImageNodeData, model: ModelCapabilities | null): string {
  const parts = [data.size ?? data.aspect_ratio ?? model?.default_size ?? "default size"];
  if (data.quality) parts.push(data.quality);
  parts.push(data.variants === 1 ? "1 variant" : `${data.variants} variants`);
  if (model === null || model.seed) parts.push(data.seed_locked && data.seed !== null ? `seed ${data.seed} (locked)` : "random seed");
  if (data.negative_prompt) parts.push("negative prompt");
  return parts.join(" · ");
}

function providerLabel(p: Provider): string {
  if (p.available) return p.name;
  if (p.live_workers > 0) return `${p.name} (on ${p.live_workers} worker${p.live_workers === 1 ? "" : "s"})`;
  return `${p.name} (unavailable)`;
}

export const ImageSettings = memo(function ImageSettings({ id, data }: { id: string; data: ImageNodeData }) {
  const controller = useController();
  const providers = useCanvas((s) => s.providers);
  const [open, setOpen] = useState(() => !!data.negative_prompt);
  const [expanded, setExpanded] = useState(false);
  const set = (patch: Partial<ImageNodeData>) => updateNodeData(controller.store, id, patch);
  const provider = providers.find((p) => p.name === data.provider);
  const model = findModel(providers, data.provider, data.model);
  const sizes = sizeChoices(model);
  const ratios = model?.aspect_ratios ?? [];
  const shape = data.size ? `size:${data.size}` : data.aspect_ratio ? `ratio:${data.aspect_ratio}` : "";
  const knownProvider = providers.some((p) => p.name === data.provider);

  return (
    <div className="ic-settings">
      <div className="ic-row">
        <label className="ic-control">
          <span className="ic-label">Provider</span>
          <select
            className="ic-select nodrag"
            data-testid="provider-select"
            value={data.provider}
            onChange={(e) => {
              const next = providers.find((p) => p.name === e.target.value);
              set({ provider: e.target.value, model: next?.default_model ?? next?.models[0]?.model ?? "", size: null, aspect_ratio: null, quality: null });
            }}
          >
            {!knownProvider ? <option value={data.provider}>{data.provider || "—"}</option> : null}
            {providers.map((p) => (
              <option key={p.name} value={p.name} title={p.available ? undefined : `${p.name} is unavailable: ${p.reason ?? "not configured"}`}>
                {providerLabel(p)}
              </option>
            ))}
          </select>
        </label>
        <label className="ic-control">
          <span className="ic-label">Model</span>
          <select className="ic-select nodrag" data-testid="model-select" value={data.model || model?.model || ""} onChange={(e) => set({ model: e.target.value, size: null, aspect_ratio: null, quality: null })}>
            {!model ? <option value={data.model}>{data.model || "—"}</option> : null}
            {(provider?.models ?? []).map((m) => (
              <option key={m.model} value={m.model}>
                {m.model}
              </option>
            ))}
          </select>
        </label>
      </div>
      {provider && !provider.available && provider.live_workers === 0 ? (
        <div className="ic-warning" data-testid="provider-warning">
          <Icon name="warn" size={13} /> {provider.name} is unavailable here: {provider.reason ?? "not configured"}. Jobs wait until a worker that can run it is live.
        </div>
      ) : null}
      <button
        type="button"
        className="ic-summary nodrag"
        data-testid="settings-toggle"
        aria-expanded={expanded}
        title={expanded ? "Hide the settings" : "Size, quality, variants, seed, negative prompt"}
        onClick={() => setExpanded(!expanded)}
      >
        <span className="ic-summary-caret">{expanded ? "▾" : "▸"}</span>
        <span className="ic-summary-text">{settingsSummary(data, model)}</span>
      </button>
      {expanded ? (
        <>
        <div className="ic-row">
          <label className="ic-control">
            <span className="ic-label">Size</span>
            <select
              className="ic-select nodrag"
              data-testid="size-select"
              value={shape}
              onChange={(e) => {
                const [kind, ...rest] = e.target.value.split(":");
                const value = rest.join(":");
                set(kind === "size" ? { size: value, aspect_ratio: null } : kind === "ratio" ? { size: null, aspect_ratio: value } : { size: null, aspect_ratio: null });
              }}
            >
              <option value="">{model?.default_size ? `default (${model.default_size})` : "default"}</option>
              {sizes.length ? (
                <optgroup label="Size">
                  {sizes.map((s) => (
                    <option key={s} value={`size:${s}`}>
                      {s}
                    </option>
                  ))}
                </optgroup>
              ) : null}
              {ratios.length ? (
                <optgroup label="Aspect ratio">
                  {ratios.map((r) => (
                    <option key={r} value={`ratio:${r}`}>
                      {r}
                    </option>
                  ))}
                </optgroup>
              ) : null}
              {shape && !sizes.includes(data.size ?? "") && !ratios.includes(data.aspect_ratio ?? "") ? <option value={shape}>{data.size ?? data.aspect_ratio}</option> : null}
            </select>
          </label>
          {model?.qualities.length ? (
            <label className="ic-control">
              <span className="ic-label">Quality</span>
              <select className="ic-select nodrag" data-testid="quality-select" value={data.quality ?? ""} onChange={(e) => set({ quality: e.target.value || null })}>
                <option value="">default</option>
                {model.qualities.map((q) => (
                  <option key={q} value={q}>
                    {q}
                  </option>
                ))}
              </select>
            </label>
          ) : null}
          <div className="ic-control ic-variants">
            <span className="ic-label">Variants</span>
            <div className="ic-segmented" role="radiogroup" aria-label="Variants">
              {[1, 2, 3, 4].map((n) => (
                <button
                  key={n}
                  type="button"
                  role="radio"
                  aria-checked={data.variants === n}
                  className={`nodrag${data.variants === n ? " ic-on" : ""}`}
                  data-testid={`variants-${n}`}
                  onClick={() => set({ variants: n })}
                >
                  {n}
                </button>
              ))}
            </div>
          </div>
        </div>
        {model === null || model.seed ? (
          <div className="ic-row ic-seed-row">
            <label className="ic-control ic-grow">
              <span className="ic-label">Seed</span>
              <input
                className="ic-input nodrag"
                data-testid="seed-input"
                type="number"
                min={0}
                max={4294967295}
                placeholder={data.seed_locked ? "locked" : "random"}
                value={data.seed ?? ""}
                onChange={(e) => {
                  const value = e.target.value === "" ? null : Math.max(0, Math.min(4294967295, Math.floor(Number(e.target.value))));
                  set({ seed: value !== null && Number.isFinite(value) ? value : null });
                }}
              />
            </label>
            <button
              type="button"
              className={`ic-icon-button nodrag${data.seed_locked ? " ic-on" : ""}`}
              data-testid="seed-lock"
              aria-pressed={data.seed_locked}
              title={data.seed_locked ? "Seed locked: every run uses it (variant i uses seed + i)" : "Seed unlocked: each run picks a new one"}
              onClick={() => set({ seed_locked: !data.seed_locked })}
            >
              <Icon name={data.seed_locked ? "lock" : "unlock"} size={14} />
            </button>
            <button type="button" className="ic-icon-button nodrag" title="New random seed" onClick={() => set({ seed: Math.floor(Math.random() * 2 ** 31) })}>
              <Icon name="dice" size={14} />
            </button>
          </div>
        ) : null}
        {model === null || model.negative_prompt ? (
          <div className="ic-disclosure">
            <button type="button" className="ic-link nodrag" aria-expanded={open} onClick={() => setOpen(!open)}>
              {open ? "▾" : "▸"} Negative prompt
            </button>
            {open ? (
              <textarea
                className="ic-textarea ic-small nodrag nowheel"
                data-testid="negative-prompt-input"
                rows={2}
                placeholder="What to keep out of the image"
                value={data.negative_prompt ?? ""}
                onChange={(e) => set({ negative_prompt: e.target.value || null })}
              />
            ) : null}
          </div>
        ) : null}
        </>
      ) : null}
    </div>
  );
});
