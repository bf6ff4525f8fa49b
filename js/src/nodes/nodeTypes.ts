// The node types, defined once at module level (a new object per render would remount every node).
import type { NodeTypes } from "@xyflow/react";
import { ImageNode } from "./ImageNode";
import { PromptNode } from "./PromptNode";

export const nodeTypes: NodeTypes = { prompt: PromptNode, image: ImageNode };
