// The source of an image to show, leased from the transport for as long as the component shows it.
import { useEffect, useState } from "react";
import type { Image } from "../api/types";
import type { ImageVariant } from "../transport/transport";
import { useController } from "../components/context";

export interface ImageSource {
  src: string | null;
  failed: boolean;
  /** The `<img>` failed to load `src`: try the fallback once, then give up. */
  onError: () => void;
}

export function useImageSource(image: Image | null, variant: ImageVariant): ImageSource {
  const { transport } = useController();
  const [state, setState] = useState<{ key: string | null; src: string | null; fallback: string | null; failed: boolean }>({
    key: null,
    src: null,
    fallback: null,
    failed: false,
  });
  const key = image ? `${image.id}:${variant}` : null;
  useEffect(() => {
    if (!image) {
      setState({ key: null, src: null, fallback: null, failed: false });
      return;
    }
    const lease = transport.loadImage(image, variant);
    let live = true;
    lease.src.then(
      (src) => live && setState({ key: `${image.id}:${variant}`, src, fallback: lease.fallback, failed: false }),
      () => live && setState({ key: `${image.id}:${variant}`, src: null, fallback: null, failed: true }),
    );
    return () => {
      live = false;
      lease.release();
    };
    // The image's identity is its id: a re-fetched Image (fresh signed URLs) shows the same picture.
  }, [key, transport]);
  const current = state.key === key ? state : { src: null, fallback: null, failed: false };
  return {
    src: current.src,
    failed: current.failed,
    onError: () =>
      setState((s) => (s.fallback && s.src !== s.fallback ? { ...s, src: s.fallback, fallback: null } : { ...s, src: null, failed: true })),
  };
}
