// KernelTransport: the same routes as widget custom messages through the kernel (no server extension needed).
import type { Image, StreamMessage } from "../api/types";
import { BlobCache, sniffImageType } from "../images/blob-cache";
import { ImageUrlPolicy } from "../images/url-policy";
import type { WidgetModel } from "../widget";
import {
  ApiError,
  type ConnectionState,
  type HttpMethod,
  type ImageLease,
  type ImageVariant,
  Listeners,
  type Query,
  type RequestOptions,
  type Transport,
} from "./transport";

export interface KernelDeps {
  setTimeout: (fn: () => void, ms: number) => unknown;
  clearTimeout: (handle: unknown) => void;
  createObjectURL: (blob: Blob) => string;
  revokeObjectURL: (url: string) => void;
  viewId: string;
}

export interface KernelOptions {
  timeoutMs?: number;
  /** First wait for the kernel to answer `ready`; doubled on each resend. */
  readyRetryMs?: number;
  /** Image loads in flight at once (each is one kernel round trip). */
  imageConcurrency?: number;
}

interface ResponseMessage {
  type: "response";
  id: string;
  view_id: string;
  status: number;
  body: unknown;
}

interface EventEnvelope {
  type: "event";
  event: StreamMessage;
}

export interface KernelAnswer<T> {
  status: number;
  body: T;
  buffers: DataView[];
}

interface Pending {
  resolve: (answer: KernelAnswer<unknown>) => void;
  reject: (err: ApiError) => void;
  timer: unknown;
  label: string;
}

const MAX_READY_RETRY_MS = 30000;

export class KernelTransport implements Transport {
  readonly kind = "kernel" as const;
  readonly policy: ImageUrlPolicy;
  readonly viewId: string;
  connection: ConnectionState = "connecting";
  /** Resolves when the kernel first answers this view (its `hello` event or any response). */
  readonly ready: Promise<void>;

  private readonly messages = new Listeners<StreamMessage>();
  private readonly states = new Listeners<ConnectionState>();
  private readonly pending = new Map<string, Pending>();
  private readonly images: BlobCache;
  private readonly timeoutMs: number;
  private readonly imageConcurrency: number;
  private imageQueue: (() => void)[] = [];
  private imagesInFlight = 0;
  private next = 0;
  private readyTimer: unknown = null;
  private readyDelay: number;
  private markReady: () => void = () => undefined;
  private disposed = false;
  private readonly onCustom = (msg: unknown, buffers?: DataView[]) => this.receive(msg, buffers ?? []);

  constructor(
    private readonly model: WidgetModel,
    private readonly deps: KernelDeps,
    options: KernelOptions = {},
  ) {
    this.viewId = deps.viewId;
    this.timeoutMs = options.timeoutMs ?? 30000;
    this.readyDelay = options.readyRetryMs ?? 3000;
    this.imageConcurrency = options.imageConcurrency ?? 6;
    this.policy = new ImageUrlPolicy("http://kernel.invalid/", "/");
    this.images = new BlobCache({
      createObjectURL: deps.createObjectURL,
      revokeObjectURL: deps.revokeObjectURL,
      setTimeout: deps.setTimeout,
      clearTimeout: deps.clearTimeout,
      onCreate: (url) => this.policy.addBlob(url),
      onRevoke: (url) => this.policy.removeBlob(url),
    });
    this.ready = new Promise((resolve) => {
      this.markReady = resolve;
    });
    model.on("msg:custom", this.onCustom);
    this.sendReady();
  }

  private sendReady(): void {
    if (this.disposed || this.connection === "open") return;
    this.model.send({ type: "ready", view_id: this.viewId });
    this.readyTimer = this.deps.setTimeout(() => this.sendReady(), this.readyDelay);
    this.readyDelay = Math.min(this.readyDelay * 2, MAX_READY_RETRY_MS);
  }

  private receive(msg: unknown, buffers: DataView[]): void {
    if (this.disposed || typeof msg !== "object" || msg === null) return;
    const type = (msg as { type?: unknown }).type;
    if (type === "response") {
      const response = msg as ResponseMessage;
      if (response.view_id !== this.viewId) return;
      this.opened();
      const pending = this.pending.get(response.id);
      if (!pending) return;
      this.pending.delete(response.id);
      this.deps.clearTimeout(pending.timer);
      if (response.status >= 400) pending.reject(ApiError.fromAnswer(response.status, response.body));
      else pending.resolve({ status: response.status, body: response.body, buffers });
    } else if (type === "event") {
      const event = (msg as EventEnvelope).event;
      if (typeof event !== "object" || event === null) return;
      this.opened();
      this.messages.emit(event);
    }
  }

  private opened(): void {
    if (this.connection === "open") return;
    this.connection = "open";
    if (this.readyTimer !== null) this.deps.clearTimeout(this.readyTimer);
    this.readyTimer = null;
    this.markReady();
    this.states.emit("open");
  }

  /** One route through the kernel, with the answer's buffers (`images/{id}/content` puts the bytes there). */
  call<T>(method: HttpMethod, path: string, options: RequestOptions = {}): Promise<KernelAnswer<T>> {
    if (this.disposed) return Promise.reject(new ApiError(0, "closed", "the canvas view is closed"));
    this.next += 1;
    const id = `${this.viewId}:${this.next}`;
    const label = `${method} ${path}`;
    const message: Record<string, unknown> = { type: "request", id, view_id: this.viewId, method, path };
    const query = cleanQuery(options.query);
    if (query) message["query"] = query;
    if (options.body !== undefined) message["body"] = options.body;
    if (options.headers && Object.keys(options.headers).length) message["headers"] = options.headers;
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    return new Promise<KernelAnswer<T>>((resolve, reject) => {
      const timer = this.deps.setTimeout(() => {
        this.pending.delete(id);
        reject(
          new ApiError(
            0,
            "timeout",
            `the kernel did not answer ${label} within ${Math.round(timeoutMs / 1000)} s: is it busy, or is imagen-canvas not installed in it?`,
          ),
        );
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (a: KernelAnswer<unknown>) => void, reject, timer, label });
      this.model.send(message);
    });
  }

  async request<T>(method: HttpMethod, path: string, options?: RequestOptions): Promise<T> {
    return (await this.call<T>(method, path, options)).body;
  }

  subscribe(listener: (message: StreamMessage) => void): () => void {
    return this.messages.add(listener);
  }

  onConnection(listener: (state: ConnectionState) => void): () => void {
    return this.states.add(listener);
  }

  loadImage(image: Image, variant: ImageVariant): ImageLease {
    return this.images.acquire(`${image.id}:${variant}`, () =>
      this.limited(async () => {
        const answer = await this.call<unknown>("GET", `images/${encodeURIComponent(image.id)}/content`, {
          query: { variant },
          timeoutMs: Math.max(this.timeoutMs, 60000),
        });
        const buffer = answer.buffers[0];
        if (!buffer) throw new ApiError(0, "no_bytes", `the kernel sent no bytes for image ${image.id}`);
        const bytes = new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength).slice();
        const said = (answer.body as { content_type?: unknown } | null)?.content_type;
        const type = typeof said === "string" && said.startsWith("image/") ? said : sniffImageType(bytes, image.content_type);
        return new Blob([bytes], { type });
      }),
    );
  }

  imageUrl(): null {
    return null;
  }

  /** Live blob URLs (tests check they are revoked when nothing shows them). */
  get liveImageUrls(): number {
    return this.images.liveUrls;
  }

  private limited<T>(run: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const start = () => {
        this.imagesInFlight += 1;
        run()
          .then(resolve, reject)
          .finally(() => {
            this.imagesInFlight -= 1;
            this.imageQueue.shift()?.();
          });
      };
      if (this.imagesInFlight < this.imageConcurrency) start();
      else this.imageQueue.push(start);
    });
  }

  setStorageOrigin(): void {
    // Images come as bytes through the kernel: no URL is ever loaded from elsewhere.
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.model.off("msg:custom", this.onCustom);
    if (this.readyTimer !== null) this.deps.clearTimeout(this.readyTimer);
    for (const pending of this.pending.values()) {
      this.deps.clearTimeout(pending.timer);
      pending.reject(new ApiError(0, "closed", `${pending.label}: the canvas view closed`));
    }
    this.pending.clear();
    this.imageQueue = [];
    this.images.clear();
    this.connection = "closed";
    this.states.emit("closed");
  }
}

function cleanQuery(query: Query | undefined): Record<string, string> | null {
  if (!query) return null;
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") out[key] = String(value);
  }
  return Object.keys(out).length ? out : null;
}
