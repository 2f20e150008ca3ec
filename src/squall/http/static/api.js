// The gateway's JSON endpoints (docs/http.md) and its event stream, for the views.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Call the API; a state-changing call carries X-Squall-Request (the cookie's CSRF guard). */
export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-Squall-Request"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await answer.json().catch(() => null);
  if (answer.status === 401) location.href = "/login";
  if (!answer.ok) {
    const error = data?.error ?? {};
    throw new ApiError(answer.status, error.code ?? "error", error.message ?? answer.statusText);
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);
export const del = (path) => call("DELETE", path);

/** A path with a query string from an object (empty values left out). */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

export const EVENT_TYPES = [
  "status",
  "error",
  "events.lost",
  "task.submitted",
  "task.started",
  "task.succeeded",
  "task.failed",
  "task.cancelled",
  "task.expired",
  "task.redelivered",
  "worker.joined",
  "worker.lost",
  "worker.drained",
];

/**
 * One EventSource on /v1/stream for the whole page; views subscribe to event types and
 * unsubscribe when they leave. EventSource reconnects by itself after a drop.
 */
export class Live {
  constructor(onState) {
    this.handlers = new Map();
    this.onState = onState;
    this.lastStatus = null;
    this.source = null;
  }

  start() {
    const source = new EventSource("/v1/stream");
    this.source = source;
    source.onopen = () => this.onState("live");
    source.onerror = () => {
      this.onState("reconnecting");
      // A stream refused for its token looks like any drop: ask once, to go to the login.
      get("/v1/session").catch(() => {});
    };
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => {
        let data;
        try {
          data = JSON.parse(message.data);
        } catch {
          return;
        }
        if (type === "status") this.lastStatus = data;
        this.emit(type, data);
      });
    }
  }

  emit(type, data) {
    for (const handler of this.handlers.get(type) ?? []) {
      try {
        handler(data, type);
      } catch (failure) {
        console.error(failure);
      }
    }
  }

  /** Call ``handler(data, type)`` for each event of ``types``; returns the unsubscriber. */
  on(types, handler) {
    const list = Array.isArray(types) ? types : [types];
    for (const type of list) {
      if (!this.handlers.has(type)) this.handlers.set(type, new Set());
      this.handlers.get(type).add(handler);
    }
    return () => {
      for (const type of list) this.handlers.get(type)?.delete(handler);
    };
  }
}
