// Blob URLs for image bytes that came as buffers: shared while shown, revoked when nothing shows them.
import type { ImageLease } from "../transport/transport";

interface Entry {
  users: number;
  src: Promise<string>;
  url: string | null;
  revokeTimer: unknown;
}

export interface BlobCacheDeps {
  createObjectURL: (blob: Blob) => string;
  revokeObjectURL: (url: string) => void;
  setTimeout: (fn: () => void, ms: number) => unknown;
  clearTimeout: (handle: unknown) => void;
  onCreate?: (url: string) => void;
  onRevoke?: (url: string) => void;
}

/** A released URL lives this long, so a node that re-mounts (zooming, scrolling) does not fetch again. */
export const REVOKE_GRACE_MS = 5000;

export class BlobCache {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly deps: BlobCacheDeps) {}

  acquire(key: string, load: () => Promise<Blob>): ImageLease {
    let entry = this.entries.get(key);
    if (!entry) {
      const created: Entry = { users: 0, src: Promise.resolve(""), url: null, revokeTimer: null };
      created.src = load().then((blob) => {
        const url = this.deps.createObjectURL(blob);
        this.deps.onCreate?.(url);
        if (this.entries.get(key) !== created) {
          // Cleared or dropped while loading: nobody holds it.
          this.revoke(url);
        } else {
          created.url = url;
        }
        return url;
      });
      created.src.catch(() => {
        if (this.entries.get(key) === created) this.entries.delete(key);
      });
      this.entries.set(key, created);
      entry = created;
    }
    if (entry.revokeTimer !== null) {
      this.deps.clearTimeout(entry.revokeTimer);
      entry.revokeTimer = null;
    }
    entry.users += 1;
    const held = entry;
    let released = false;
    return {
      src: held.src,
      fallback: null,
      release: () => {
        if (released) return;
        released = true;
        this.release(key, held);
      },
    };
  }

  /** How many entries hold a live blob URL (for tests and the leak check). */
  get liveUrls(): number {
    let n = 0;
    for (const entry of this.entries.values()) if (entry.url) n += 1;
    return n;
  }

  clear(): void {
    for (const entry of this.entries.values()) {
      if (entry.revokeTimer !== null) this.deps.clearTimeout(entry.revokeTimer);
      if (entry.url) this.revoke(entry.url);
    }
    this.entries.clear();
  }

  private release(key: string, entry: Entry): void {
    entry.users -= 1;
    if (entry.users > 0) return;
    entry.revokeTimer = this.deps.setTimeout(() => {
      entry.revokeTimer = null;
      if (entry.users > 0 || this.entries.get(key) !== entry) return;
      this.entries.delete(key);
      if (entry.url) this.revoke(entry.url);
    }, REVOKE_GRACE_MS);
  }

  private revoke(url: string): void {
    this.deps.revokeObjectURL(url);
    this.deps.onRevoke?.(url);
  }
}

/** The image type from its first bytes (PNG, JPEG, WebP, GIF), else `fallback`. */
export function sniffImageType(bytes: Uint8Array, fallback: string): string {
  const starts = (sig: number[], at = 0) => sig.every((b, i) => bytes[at + i] === b);
  if (starts([0x89, 0x50, 0x4e, 0x47])) return "image/png";
  if (starts([0xff, 0xd8, 0xff])) return "image/jpeg";
  if (starts([0x52, 0x49, 0x46, 0x46]) && starts([0x57, 0x45, 0x42, 0x50], 8)) return "image/webp";
  if (starts([0x47, 0x49, 0x46, 0x38])) return "image/gif";
  return fallback;
}
