// The service's HTTP API, the SSE stream reader and the WebSocket channel with reconnect.

const KEY_STORAGE = "msev15.apiKey";
const TOKEN_STORAGE = "msev15.token";

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

/** A staff member's tenant API key (the "Advanced" control); when set it is used instead of a token. */
export const apiKey = {
  get: () => localStorage.getItem(KEY_STORAGE) || "",
  set: (value) => (value ? localStorage.setItem(KEY_STORAGE, value) : localStorage.removeItem(KEY_STORAGE)),
};

/**
 * The customer's token: `kind` "client" when it came from the shop's link (`#token=`), "visitor" when
 * the page fetched it for an anonymous visitor (public chat).
 */
export const clientToken = {
  get() {
    try {
      const held = JSON.parse(localStorage.getItem(TOKEN_STORAGE) || "null");
      return typeof held?.token === "string" && held.token ? held : null;
    } catch {
      return null;
    }
  },
  set: (token, kind) => localStorage.setItem(TOKEN_STORAGE, JSON.stringify({ token, kind })),
  clear: () => localStorage.removeItem(TOKEN_STORAGE),
};

/**
 * What a token says about itself: its JWT payload's tenant, user, email and expiry (not verified here:
 * the server does that), or null when it is not a readable JWT.
 */
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "="));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
    if (typeof claims?.tid !== "string" || !claims.tid || typeof claims.sub !== "string" || !claims.sub) return null;
    return {
      tenant: claims.tid,
      user: claims.sub,
      email: typeof claims.email === "string" ? claims.email : null,
      expiresAt: typeof claims.exp === "number" ? claims.exp * 1000 : Infinity,
    };
  } catch {
    return null;
  }
}

/** The credential every call presents: the API key when one is set, else the token, else nothing. */
export function credential() {
  const key = apiKey.get();
  if (key) return { kind: "key", value: key };
  const held = clientToken.get();
  return held ? { kind: "token", value: held.token } : null;
}

function headers(extra = {}) {
  const found = credential();
  return found ? { ...extra, Authorization: `Bearer ${found.value}` } : extra;
}

const presented = (init) => init.headers.Authorization?.slice(7) ?? null;

/** The error for a failed response; `credential` is what the request presented (to tell a stale one). */
async function failure(response, credential) {
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
  error.credential = credential;
  return error;
}

async function request(method, path, { query, body } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(query ?? {})) url.searchParams.set(k, v);
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(url, init);
  if (!response.ok) throw await failure(response, presented(init));
  return response.json();
}

export const api = {
  /** A token for a new anonymous visitor; a 404 means public chat is off. No credentials are sent. */
  async visitorToken() {
    const response = await fetch("/api/v1/visitor-tokens", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    if (!response.ok) throw await failure(response);
    return response.json();
  },
  sessions: (tenant) => request("GET", "/api/v1/sessions", { query: { tenant_id: tenant } }),
  history: (tenant, id) =>
    request("GET", `/api/v1/sessions/${encodeURIComponent(id)}/history`, { query: { tenant_id: tenant } }),
  remove: (tenant, id) =>
    request("DELETE", `/api/v1/sessions/${encodeURIComponent(id)}`, { query: { tenant_id: tenant } }),
  /** The customer's stop: the answer keeps running otherwise, whatever happens to the connection. */
  stop: (tenant, id) =>
    request("POST", `/api/v1/sessions/${encodeURIComponent(id)}/stop`, { query: { tenant_id: tenant } }),
  async readiness() {
    const response = await fetch("/health/readiness");
    return response.json(); // 503 carries the same body
  },
};

/**
 * A body silent this long is taken for a dead connection: the service sends a keep-alive comment
 * every 15 s while an answer is quiet (a long tool call), so only a cut link stays silent longer.
 */
const STALL_MS = 45_000;

/**
 * Read a `text/event-stream` body and call onEvent for each `data:` event; resolves at the end of
 * the body, also when it stalls (see STALL_MS): the caller tells a finished answer by its `done`.
 */
async function readSSE(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let stall = 0;
  const arm = () => {
    clearTimeout(stall);
    stall = setTimeout(() => reader.cancel().catch(() => {}), STALL_MS);
  };
  let buffer = "";
  try {
    for (;;) {
      arm();
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
  } finally {
    clearTimeout(stall);
  }
}

/** POST a chat to the SSE endpoint and call onEvent for each `data:` event; resolves at the end. */
export async function streamSSE(body, onEvent, signal) {
  const init = {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
    signal,
  };
  const response = await fetch("/api/v1/chat/stream", init);
  if (!response.ok) throw await failure(response, presented(init));
  await readSSE(response, onEvent);
}

/**
 * Pick an answer up again after a dropped connection: its events after `position`
 * (`<turn_id>:<seq>`, sent as `Last-Event-ID`), then the live ones, to its `done` or `error`.
 * Without a position: the session's running answer (or its latest one) from the start. `onOpen`
 * runs once the service has accepted; a 404 (ApiError) means the answer is no longer kept.
 */
export async function resumeSSE({ tenant, sessionId, position }, onEvent, signal, onOpen) {
  const url = new URL(`/api/v1/sessions/${encodeURIComponent(sessionId)}/stream`, window.location.origin);
  url.searchParams.set("tenant_id", tenant);
  const extra = { Accept: "text/event-stream" };
  if (position) extra["Last-Event-ID"] = position;
  const init = { headers: headers(extra), cache: "no-store", signal };
  const response = await fetch(url, init);
  if (!response.ok) throw await failure(response, presented(init));
  onOpen?.();
  await readSSE(response, onEvent);
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
    this.heard = true; // anything received since the last ping
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
    const found = credential(); // browsers cannot set headers on a WebSocket: the query carries it
    if (found) url.searchParams.set(found.kind === "key" ? "api_key" : "token", found.value);
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
      if (this.ws !== ws) return;
      this.attempt = 0;
      this.heard = true;
      this.pinger = setInterval(() => this.check(ws), 25_000);
      this.onState("open");
    };
    ws.onmessage = (message) => {
      if (this.ws !== ws) return; // a replaced socket: what it still says is resent on the new one
      this.heard = true;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (event.type !== "pong") this.onEvent(event);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return; // replaced by a newer socket (whose pinger this must not clear)
      clearInterval(this.pinger);
      this.ws = null;
      this.schedule();
    };
  }

  /**
   * Every 25 s: a ping, which also keeps proxies from closing an idle socket. A socket that has not
   * answered the previous ping (nor sent anything since) is dead without knowing it (the network
   * went away without a word): drop it and reconnect.
   */
  check(ws) {
    if (this.ws !== ws) return;
    if (!this.heard) {
      clearInterval(this.pinger);
      this.ws = null;
      ws.close();
      this.schedule();
      return;
    }
    this.heard = false;
    this.send({ type: "ping" });
  }

  schedule() {
    const delay = Math.min(30_000, 500 * 2 ** this.attempt) * (0.75 + Math.random() * 0.5);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.onState("waiting");
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Close the socket and stay closed (no credential to connect with). */
  disconnect() {
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    const old = this.ws;
    this.ws = null;
    this.attempt = 0;
    old?.close();
  }

  /** Reconnect now (new API key or token, network back): drop the old socket without scheduling. */
  restart() {
    clearTimeout(this.timer);
    clearInterval(this.pinger);
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
