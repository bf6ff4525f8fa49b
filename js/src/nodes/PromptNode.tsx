// The prompt node: text and style modifiers, feeding every image node it is connected to.
import { Handle, type NodeProps, Position, useStore as useFlowStore } from "@xyflow/react";
import { memo, useState, type KeyboardEvent } from "react";
import { useCanvas, useController } from "../components/context";
import { Icon } from "../components/ui";
import { type PromptFlowNode, imageTargets, isPromptNode, nodeById } from "../state/graph";
import { updateNodeData } from "../state/store";
import { SIMPLE_ZOOM } from "./ImageNode";

const zoomedOut = (s: { transform: [number, number, number] }) => s.transform[2] < SIMPLE_ZOOM;

function PromptNodeView({ id, selected }: NodeProps<PromptFlowNode>) {
  const controller = useController();
  const data = useCanvas((s) => {
    const node = nodeById(s.nodes, id);
    return isPromptNode(node) ? node.data : null;
  });
  const targets = useCanvas((s) => imageTargets(s.nodes, s.edges, id).length);
  const error = useCanvas((s) => s.nodeErrors[id]);
  const simple = useFlowStore(zoomedOut);
  const [modifier, setModifier] = useState("");
  if (!data) return null;
  if (simple) {
    return (
      <div className={`ic-node ic-simple ic-simple-prompt${selected ? " ic-selected" : ""}`} data-testid="prompt-node">
        <div className="ic-simple-label">{data.text || "Prompt"}</div>
        <Handle type="source" position={Position.Right} className="ic-handle" />
      </div>
    );
  }
  const run = () => void controller.generate(id);
  const onKeyDown = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      e.stopPropagation();
      run();
    }
  };
  const addModifier = () => {
    const text = modifier.trim();
    if (!text || data.style_modifiers.includes(text)) return;
    updateNodeData(controller.store, id, { style_modifiers: [...data.style_modifiers, text] });
    setModifier("");
  };
  return (
    <div className={`ic-node ic-prompt-node${selected ? " ic-selected" : ""}`} data-testid="prompt-node" data-node-id={id}>
      <header className="ic-node-head">
        <span className="ic-node-kind">
          <Icon name="prompt" size={14} /> Prompt
        </span>
        <span className="ic-count" data-testid="prompt-targets">
          {targets === 1 ? "1 image node" : `${targets} image nodes`}
        </span>
      </header>
      <textarea
        className="ic-textarea nodrag nowheel"
        data-testid="prompt-input"
        rows={4}
        placeholder="A prompt for every image node connected to this one…"
        value={data.text}
        onChange={(e) => updateNodeData(controller.store, id, { text: e.target.value })}
        onKeyDown={onKeyDown}
      />
      <div className="ic-chips" data-testid="style-modifiers">
        {data.style_modifiers.map((m) => (
          <span key={m} className="ic-chip">
            {m}
            <button
              type="button"
              className="nodrag"
              aria-label={`Remove ${m}`}
              onClick={() => updateNodeData(controller.store, id, { style_modifiers: data.style_modifiers.filter((x) => x !== m) })}
            >
              ×
            </button>
          </span>
        ))}
        <input
          className="ic-chip-input nodrag"
          data-testid="style-modifier-input"
          placeholder="+ style"
          value={modifier}
          onChange={(e) => setModifier(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === "Enter") {
              e.preventDefault();
              addModifier();
            }
          }}
          onBlur={addModifier}
        />
      </div>
      {error ? (
        <div className="ic-error" data-testid="node-error" role="alert">
          {error}
        </div>
      ) : null}
      <div className="ic-actions">
        <button type="button" className="ic-button ic-button-primary nodrag" data-testid="generate-button" disabled={!targets} title="Run every connected image node (Ctrl/Cmd+Enter)" onClick={run}>
          <Icon name="play" size={12} /> {targets > 1 ? `Run ${targets}` : "Run"}
        </button>
      </div>
      <Handle type="source" position={Position.Right} className="ic-handle" />
    </div>
  );
}

export const PromptNode = memo(PromptNodeView);
