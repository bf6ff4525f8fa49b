// Which transport a view uses: the server extension when `GET {baseUrl}imagen/api/health` answers 200, else the kernel.
import type { WidgetModel } from "../widget";
import type { SocketLike } from "./event-socket";
import { KernelTransport } from "./kernel";
import { ServerTransport, probeServer, type ServerConfig } from "./server";
import type { Transport } from "./transport";

/** `baseUrl` and `token` from the page's `#jupyter-config-data` (JupyterLab, Notebook 7), or null elsewhere. */
export function readPageConfig(doc: Document): ServerConfig | null {
  const element = doc.getElementById("jupyter-config-data");
  if (!element?.textContent) return null;
  try {
    const config = JSON.parse(element.textContent) as { baseUrl?: unknown; token?: unknown };
    let baseUrl = typeof config.baseUrl === "string" && config.baseUrl ? config.baseUrl : "/";
    if (!baseUrl.startsWith("/")) baseUrl = new URL(baseUrl, doc.location?.href ?? "http://localhost/").pathname;
    if (!baseUrl.endsWith("/")) baseUrl += "/";
    const token = typeof config.token === "string" && config.token ? config.token : null;
    return { baseUrl, token };
  } catch {
    return null;
  }
}

export interface Choice {
  transport: Transport;
  /** Why the server transport was not taken (for the status when the kernel does not answer either). */
  serverMissing: string | null;
}

export async function chooseTransport(model: WidgetModel, viewId: string): Promise<Choice> {
  const config = readPageConfig(document);
  let serverMissing = "this page has no Jupyter server config (not JupyterLab or Notebook 7)";
  if (config) {
    const health = await probeServer(config, window.fetch.bind(window));
    if (health !== null) {
      const transport = new ServerTransport(config, {
        fetch: window.fetch.bind(window),
        pageUrl: window.location.href,
        cookie: () => document.cookie,
        socket: {
          createSocket: (url) => new WebSocket(url) as unknown as SocketLike,
          setTimeout: (fn, ms) => window.setTimeout(fn, ms),
          clearTimeout: (h) => window.clearTimeout(h as number),
          random: Math.random,
        },
      });
      return { transport, serverMissing: null };
    }
    serverMissing = `the imagen server extension does not answer at ${config.baseUrl}imagen/api/health`;
  }
  const transport = new KernelTransport(model, {
    viewId,
    setTimeout: (fn, ms) => window.setTimeout(fn, ms),
    clearTimeout: (h) => window.clearTimeout(h as number),
    createObjectURL: (blob) => URL.createObjectURL(blob),
    revokeObjectURL: (url) => URL.revokeObjectURL(url),
  });
  return { transport, serverMissing };
}
