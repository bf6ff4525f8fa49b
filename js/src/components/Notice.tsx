// A notice from the kernel transport (it started a worker for this owner, ...), shown for a few seconds.
import { memo, useEffect } from "react";
import { useCanvas, useController } from "./context";

const SHOWN_MS = 6000;

export const Notice = memo(function Notice() {
  const { store } = useController();
  const notice = useCanvas((s) => s.notice);
  useEffect(() => {
    if (!notice) return;
    const timer = setTimeout(() => store.setState((s) => (s.notice === notice ? { notice: null } : {})), SHOWN_MS);
    return () => clearTimeout(timer);
  }, [notice, store]);
  if (!notice) return null;
  return (
    <div className="ic-notice" data-testid="canvas-notice" role="status">
      {notice}
    </div>
  );
});
