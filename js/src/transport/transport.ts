// The one Transport interface the canvas talks through: REST-shaped requests, the event stream, image sources.
import type { ErrorBody, Image, StreamMessage } from "../api/types";

export type TransportKind = "server" | "kernel";
export type HttpMethod = "GET" | "POST" | "PUT" | "DELETE";
export type ImageVariant = "thumbnail" | "full";
/** `open`: events flow; `connecting`: (re)connecting, events may be delayed but are not lost. */
export type ConnectionState = "connecting" | "open" | "closed";

export type Query = Record<string, string | number | null | undefined>;

export interface RequestOptions {
  query?: Query;
  body?: unknown;
  headers?: Record<string, string>;
  timeoutMs?: number;
  /** Outlive the page (a save on unload); the server transport uses fetch's keepalive. */
  keepalive?: boolean;
}

/** A loaded image source; `release` says the caller no longer shows it. */
export interface ImageLease {
  src: Promise<string>;
  /** Another source to try when `src` fails to load (an expired signed URL), else null. */
  fallback: string | null;
  release(): void;
}

export interface Transport {
  readonly kind: TransportKind;
  readonly connection: ConnectionState;
  /** One route of docs/api.md (`path` relative to `api/`); resolves with the body, throws ApiError. */
  request<T>(method: HttpMethod, path: string, options?: RequestOptions): Promise<T>;
  /** Every stream message (`hello`, job events, `canvas`, `workers`, `reset`). */
  subscribe(listener: (message: StreamMessage) => void): () => void;
  onConnection(listener: (state: ConnectionState) => void): () => void;
  loadImage(image: Image, variant: ImageVariant): ImageLease;
  /** A URL to show the image with at once (the server's signed URL), or null where bytes must be fetched first. */
  imageUrl(image: Image, variant: ImageVariant): { src: string; fallback: string | null } | null;
  /** Where image URLs may come from besides this server (GET health's `storage_origin`). */
  setStorageOrigin(origin: string | null): void;
  dispose(): void;
}

/** A 4xx/5xx answer (`status` > 0) or a transport failure (`status` 0: network, timeout). */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly field: string | undefined;
  readonly body: ErrorBody | undefined;

  constructor(status: number, code: string, message: string, body?: ErrorBody) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.field = body?.error.field;
    this.body = body;
  }

  static fromAnswer(status: number, body: unknown): ApiError {
    if (isErrorBody(body)) {
      return new ApiError(status, body.error.code, body.error.message, body);
    }
    const text = typeof body === "string" && body.trim() ? body.trim().slice(0, 300) : `HTTP ${status}`;
    return new ApiError(status, status === 404 ? "not_found" : "internal", text);
  }
}

export function isErrorBody(body: unknown): body is ErrorBody {
  if (typeof body !== "object" || body === null || !("error" in body)) return false;
  const error = (body as { error: unknown }).error;
  return typeof error === "object" && error !== null && typeof (error as { message?: unknown }).message === "string";
}

/** A small listener set, the one fan-out both transports use. */
export class Listeners<T> {
  private readonly set = new Set<(value: T) => void>();

  add(listener: (value: T) => void): () => void {
    this.set.add(listener);
    return () => {
      this.set.delete(listener);
    };
  }

  emit(value: T): void {
    for (const listener of [...this.set]) {
      try {
        listener(value);
      } catch (err) {
        console.error("imagen-canvas: a listener failed", err);
      }
    }
  }

  get size(): number {
    return this.set.size;
  }
}

export function queryString(query: Query | undefined): string {
  if (!query) return "";
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") params.set(key, String(value));
  }
  const text = params.toString();
  return text ? `?${text}` : "";
}
