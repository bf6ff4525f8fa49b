import { afterEach, describe, expect, it, vi } from "vitest";
import { FakeWidgetModel } from "./tests/fake-widget-model";
import { FakeSocket } from "./tests/fake-websocket";
import { CanvasView } from "./view";

const noop = { addEventListener: () => undefined, removeEventListener: () => undefined };

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

/** A page: `config` is #jupyter-config-data (null: not Jupyter), `server` answers fetch (null: nothing there). */
function page(config: object | null, server: ((url: string) => Response) | null) {
  const fetchFn = vi.fn(async (url: string) => {
    if (!server) throw new TypeError("Failed to fetch");
    return server(url);
  });
  vi.stubGlobal("window", {
    ...noop,
    fetch: fetchFn,
    location: { href: "http://127.0.0.1:8888/lab/tree/a.ipynb" },
    setTimeout: (fn: () => void, ms: number) => setTimeout(fn, ms),
    clearTimeout: (h: number) => clearTimeout(h),
  });
  vi.stubGlobal("document", {
    ...noop,
    cookie: "_xsrf=abc",
    visibilityState: "visible",
    getElementById: (id: string) => (id === "jupyter-config-data" && config ? { textContent: JSON.stringify(config) } : null),
  });
  vi.stubGlobal("WebSocket", FakeSocket);
  return fetchFn;
}

const extension = (url: string): Response => {
  if (url.endsWith("imagen/api/health")) return json(200, { database: "embedded", pending_migrations: [], storage_origin: null, error: null });
  if (url.endsWith("imagen/api/providers")) return json(200, { default_provider: "local", providers: [] });
  if (url.includes("imagen/api/jobs")) return json(200, { jobs: [], next_cursor: null });
  return json(404, { error: { code: "not_found", message: "no such canvas" } });
};

afterEach(() => {
  vi.unstubAllGlobals();
  vi.useRealTimers();
});

describe("choosing the transport at start", () => {
  it("takes the server extension when health answers 200, and says so to Python", async () => {
    const fetchFn = page({ baseUrl: "/", token: "tok" }, extension);
    const model = new FakeWidgetModel({ canvas_id: "c1" });
    const view = new CanvasView(model.asModel());
    await view.start();
    expect(fetchFn.mock.calls[0]?.[0]).toBe("/imagen/api/health");
    expect(model.traits.transport).toBe("server");
    expect(model.traits.status).toBe("ready");
    expect(view.state.phase).toBe("ready");
    await view.dispose();
  });

  it.each([true, false])("falls back to the kernel without the extension (kernel sends hello: %s)", async (hello) => {
    page({ baseUrl: "/user/ann/", token: "" }, () => json(404, {}));
    const model = new FakeWidgetModel({ canvas_id: "c1" });
    model.send = (content: Record<string, unknown>) => {
      model.sent.push(content);
      if (content["type"] === "ready" && hello) {
        queueMicrotask(() => model.receive({ type: "event", event: { kind: "hello", cursor: "1", owner_user_id: "o", workers: [] } }));
      } else if (content["type"] === "request") {
        const path = String(content["path"]);
        const body =
          path === "health" ? { database: "embedded", pending_migrations: [], storage_origin: null, error: null }
          : path === "providers" ? { default_provider: "local", providers: [] }
          : path === "jobs" ? { jobs: [], next_cursor: null }
          : { error: { code: "not_found", message: "no such canvas" } };
        const status = path.startsWith("canvases/") ? 404 : 200;
        queueMicrotask(() => model.receive({ type: "response", id: content["id"], view_id: content["view_id"], status, body }));
      }
    };
    const view = new CanvasView(model.asModel());
    await view.start();
    expect(model.traits.transport).toBe("kernel");
    expect(model.sent[0]).toMatchObject({ type: "ready" });
    expect(model.traits.status).toBe("ready");
    await view.dispose();
  });

  it("says what is missing when neither the extension nor the kernel answers", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    page(null, null);
    const model = new FakeWidgetModel({ canvas_id: "c1" });
    const view = new CanvasView(model.asModel());
    void view.start();
    await vi.advanceTimersByTimeAsync(11000);
    expect(model.traits.transport).toBe("kernel");
    expect(view.state.phase).toBe("unavailable");
    expect(model.traits.status).toMatch(/No imagen backend/);
    expect(model.traits.status).toMatch(/kernel does not answer/);
    await view.dispose();
  });

  it("makes a canvas id when Python gave none", async () => {
    page({ baseUrl: "/", token: "" }, extension);
    const model = new FakeWidgetModel({ canvas_id: "" });
    const view = new CanvasView(model.asModel());
    await view.start();
    expect(model.traits.canvas_id).toMatch(/^[0-9a-f-]{36}$/);
    await view.dispose();
  });
});
