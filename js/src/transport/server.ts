// ServerTransport: the Jupyter server extension's REST routes (same origin, XSRF, token) and its events socket.
import type { Image, StreamMessage } from "../api/types";
import { ImageUrlPolicy } from "../images/url-policy";
import { acquireEventSocket, type EventSocket, type EventSocketDeps } from "./event-socket";
import {
  ApiError,
  type ConnectionState,
  type HttpMethod,
  type ImageLease,
  type ImageVariant,
  type RequestOptions,
  type Transport,
  queryString,
} from "./transport";

export interface ServerConfig {
  /** The Jupyter base URL, with a trailing slash (`/`, `/user/NAME/`). */
  baseUrl: string;
  token: string | null;
}

export interface ServerDeps {
  fetch: typeof fetch;
  /** The page's URL (origin and scheme for the socket). */
  pageUrl: string;
  cookie: () => string;
  socket: EventSocketDeps;
}

const DEFAULT_TIMEOUT_MS = 30000;
/** A signed URL this close to expiry is fetched through the content route instead. */
const EXPIRY_MARGIN_MS = 30000;

export function xsrfToken(cookie: string): string | null {
  for (const part of cookie.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === "_xsrf") return decodeURIComponent(rest.join("="));
  }
  return null;
}

export function apiUrl(config: ServerConfig, path: string): string {
  return `${config.baseUrl}imagen/api/${path.replace(/^\/+/, "")}`;
}

export function eventsSocketUrl(config: ServerConfig, pageUrl: string): string {
  const page = new URL(pageUrl);
  const scheme = page.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${page.host}${apiUrl(config, "events")}`;
}

export class ServerTransport implements Transport {
  readonly kind = "server" as const;
  readonly policy: ImageUrlPolicy;
  private readonly socket: EventSocket;
  private readonly releaseSocket: () => void;
  private disposed = false;

  constructor(
    readonly config: ServerConfig,
    private readonly deps: ServerDeps,
  ) {
    this.policy = new ImageUrlPolicy(deps.pageUrl, config.baseUrl);
    const shared = acquireEventSocket(eventsSocketUrl(config, deps.pageUrl), config.token, deps.socket);
    this.socket = shared.socket;
    this.releaseSocket = shared.release;
  }

  get connection(): ConnectionState {
    return this.socket.state;
  }

  headers(extra?: Record<string, string>, json = false): Record<string, string> {
    const headers: Record<string, string> = { ...extra };
    if (json) headers["Content-Type"] = "application/json";
    const xsrf = xsrfToken(this.deps.cookie());
    if (xsrf) headers["X-XSRFToken"] = xsrf;
    if (this.config.token) headers["Authorization"] = `token ${this.config.token}`;
    return headers;
  }

  async request<T>(method: HttpMethod, path: string, options: RequestOptions = {}): Promise<T> {
    const url = apiUrl(this.config, path) + queryString(options.query);
    const hasBody = options.body !== undefined;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    let response: Response;
    try {
      response = await this.deps.fetch(url, {
        method,
        headers: this.headers(options.headers, hasBody),
        body: hasBody ? JSON.stringify(options.body) : undefined,
        credentials: "same-origin",
        keepalive: options.keepalive ?? false,
        signal: options.keepalive ? undefined : controller.signal,
      });
    } catch (err) {
      const timedOut = controller.signal.aborted;
      throw new ApiError(
        0,
        timedOut ? "timeout" : "network",
        timedOut ? `${method} ${path} took too long; is the Jupyter server busy?` : `${method} ${path}: the server cannot be reached (${String(err)})`,
      );
    } finally {
      clearTimeout(timer);
    }
    const text = await response.text();
    let body: unknown = text;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        body = text;
      }
    } else {
      body = null;
    }
    if (!response.ok) throw ApiError.fromAnswer(response.status, body);
    return body as T;
  }

  subscribe(listener: (message: StreamMessage) => void): () => void {
    return this.socket.messages.add(listener);
  }

  onConnection(listener: (state: ConnectionState) => void): () => void {
    return this.socket.states.add(listener);
  }

  /** Kick the socket's reconnect now (the page came back online or into view). */
  nudge(): void {
    this.socket.nudge();
  }

  loadImage(image: Image, variant: ImageVariant): ImageLease {
    const { src, fallback } = this.imageUrl(image, variant);
    return { src: Promise.resolve(src), fallback, release: () => undefined };
  }

  imageUrl(image: Image, variant: ImageVariant): { src: string; fallback: string | null } {
    const src = this.imageSrc(image, variant);
    const content = this.contentUrl(image.id, variant);
    return { src, fallback: src === content ? null : content };
  }

  /** The signed URL the Image carries while it is fresh and allowed, else this server's content route. */
  imageSrc(image: Image, variant: ImageVariant, now = Date.now()): string {
    const direct = variant === "thumbnail" ? image.thumbnail_url : image.url;
    const expires = image.expires_at ? Date.parse(image.expires_at) : Number.POSITIVE_INFINITY;
    if (direct && this.policy.allows(direct) && !(expires - now < EXPIRY_MARGIN_MS)) return direct;
    return this.contentUrl(image.id, variant);
  }

  contentUrl(imageId: string, variant: ImageVariant): string {
    return apiUrl(this.config, `images/${encodeURIComponent(imageId)}/content`) + queryString({ variant });
  }

  setStorageOrigin(origin: string | null): void {
    this.policy.setStorageOrigin(origin);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.releaseSocket();
  }
}

/** Probe `GET {baseUrl}imagen/api/health`: true when the extension answers 200. */
export async function probeServer(config: ServerConfig, fetchFn: typeof fetch, timeoutMs = 4000): Promise<unknown | null> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const headers: Record<string, string> = {};
    if (config.token) headers["Authorization"] = `token ${config.token}`;
    const response = await fetchFn(apiUrl(config, "health"), {
      headers,
      credentials: "same-origin",
      signal: controller.signal,
    });
    if (response.status !== 200) return null;
    try {
      return await response.json();
    } catch {
      return null;
    }
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
  }
}
