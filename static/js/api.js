// The service's HTTP API, the SSE stream reader and the WebSocket channel with reconnect.

const KEY_STORAGE = "msev15.apiKey";

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

export const apiKey = {
  get: () => localStorage.getItem(KEY_STORAGE) || "",
  set: (value) => (value ? localStorage.setItem(KEY_STORAGE, value) : localStorage.removeItem(KEY_STORAGE)),
};

function headers(extra = {}) {
  const key = apiKey.get();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function failure(response) {
  let type = "internal_error";
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    type = body.error?.type ?? type;
    message = body.error?.message ?? message;
  } catch {
    /* not our JSON error shape (a proxy?): keep the status text */
  }
  const error = new ApiError(response.status, type, message);
  error.retryAfter = Number(response.headers.get("Retry-After")) || 0;
  return error;
}

async function request(method, path, { query, body } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(query ?? {})) url.searchParams.set(k, v);
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(url, init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

export const api = {
  sessions: (tenant) => request("GET", "/api/v1/sessions", { query: { tenant_id: tenant } }),
  history: (tenant, id) =>
    request("GET", `/api/v1/sessions/${encodeURIComponent(id)}/history`, { query: { tenant_id: tenant } }),
  remove: (tenant, id) =>
    request("DELETE", `/api/v1/sessions/${encodeURIComponent(id)}`, { query: { tenant_id: tenant } }),
  async readiness() {
    const response = await fetch("/health/readiness");
    return response.json(); // 503 carries the same body
  },
};

/** POST a chat to the SSE endpoint and call onEvent for each `data:` event; resolves at the end. */
export async function streamSSE(body, onEvent, signal) {
  const response = await fetch("/api/v1/chat/stream", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = frame
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

/**
 * The WebSocket channel: connects, reconnects with jittered exponential backoff, pings to keep
 * proxies from closing an idle socket, and reports its state: connecting | open | waiting | unsupported.
 */
export class ChatSocket {
  constructor({ onEvent, onState }) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.pinger = null;
    this.retryAt = 0;
  }

  get open() {
    return this.ws?.readyState === 1;
  }

  connect() {
    clearTimeout(this.timer);
    if (typeof window.WebSocket !== "function") {
      this.onState("unsupported");
      return;
    }
    const url = new URL("/api/v1/chat/ws", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const key = apiKey.get();
    if (key) url.searchParams.set("api_key", key);
    let ws;
    try {
      ws = new window.WebSocket(url);
    } catch {
      this.onState("unsupported");
      return;
    }
    this.ws = ws;
    this.onState("connecting");
    ws.onopen = () => {
      this.attempt = 0;
      this.onState("open");
      this.pinger = setInterval(() => this.send({ type: "ping" }), 25_000);
    };
    ws.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (event.type !== "pong") this.onEvent(event);
    };
    ws.onclose = () => {
      clearInterval(this.pinger);
      if (this.ws !== ws) return; // replaced by a newer socket
      this.ws = null;
      this.schedule();
    };
  }

  schedule() {
    const delay = Math.min(30_000, 500 * 2 ** this.attempt) * (0.75 + Math.random() * 0.5);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.onState("waiting");
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Reconnect now (new API key, network back): drop the old socket without scheduling. */
  restart() {
    const old = this.ws;
    this.ws = null;
    this.attempt = 0;
    old?.close();
    this.connect();
  }

  send(frame) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }
}
