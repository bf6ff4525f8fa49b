// Which image URLs the canvas loads: this server's `imagen/` routes, the storage origin, and its own blob URLs.

export class ImageUrlPolicy {
  private storageOrigin: string | null = null;
  private readonly blobs = new Set<string>();

  /** `pageUrl` is the page's own URL; `baseUrl` the Jupyter base URL (`/`, `/user/NAME/`). */
  constructor(
    private readonly pageUrl: string,
    private readonly baseUrl: string,
  ) {}

  setStorageOrigin(origin: string | null): void {
    this.storageOrigin = null;
    if (!origin) return;
    try {
      const parsed = new URL(origin);
      if (parsed.protocol === "https:" || parsed.protocol === "http:") this.storageOrigin = parsed.origin;
    } catch {
      this.storageOrigin = null;
    }
  }

  addBlob(url: string): void {
    this.blobs.add(url);
  }

  removeBlob(url: string): void {
    this.blobs.delete(url);
  }

  allows(url: string | null | undefined): boolean {
    if (!url) return false;
    if (url.startsWith("blob:")) return this.blobs.has(url);
    let parsed: URL;
    let page: URL;
    try {
      page = new URL(this.pageUrl);
      parsed = new URL(url, page);
    } catch {
      return false;
    }
    if (parsed.protocol !== "https:" && parsed.protocol !== "http:") return false;
    if (parsed.origin === page.origin) return parsed.pathname.startsWith(`${this.baseUrl}imagen/`);
    return this.storageOrigin !== null && parsed.origin === this.storageOrigin;
  }
}
