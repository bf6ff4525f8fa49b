// The source of an image to show: the server's URL at once, or bytes leased from the kernel while shown.
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

interface Loaded {
  key: string | null;
  src: string | null;
  fallback: string | null;
  failed: boolean;
}

const NONE: Loaded = { key: null, src: null, fallback: null, failed: false };

export function useImageSource(image: Image | null, variant: ImageVariant): ImageSource {
  const { transport } = useController();
  const key = image ? `${image.id}:${variant}` : null;
  // A URL known now renders in the same pass as the node (200 thumbnails start loading together).
  const direct = image ? transport.imageUrl(image, variant) : null;
  const [loaded, setLoaded] = useState<Loaded>(NONE);
  const [override, setOverride] = useState<Loaded>(NONE);

  useEffect(() => {
    if (!image || direct) return;
    const lease = transport.loadImage(image, variant);
    let live = true;
    const at = `${image.id}:${variant}`;
    lease.src.then(
      (src) => live && setLoaded({ key: at, src, fallback: lease.fallback, failed: false }),
      () => live && setLoaded({ key: at, src: null, fallback: null, failed: true }),
    );
    return () => {
      live = false;
      lease.release();
    };
    // The image's identity is its id: a re-fetched Image (fresh signed URLs) shows the same picture.
  }, [key, transport, direct === null]);

  const base: Loaded = direct ? { key, src: direct.src, fallback: direct.fallback, failed: false } : loaded.key === key ? loaded : NONE;
  const current = override.key === key && override.key !== null ? override : base;
  return {
    src: current.src,
    failed: current.failed,
    onError: () =>
      setOverride(
        current.fallback && current.src !== current.fallback
          ? { ...current, src: current.fallback, fallback: null }
          : { ...current, src: null, failed: true },
      ),
  };
}
