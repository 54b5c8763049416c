// The chat page: wires the API, the WebSocket/SSE transports and the DOM together.

import { api, apiKey, ChatSocket, streamSSE } from "./api.js";
import { AssistantTurn, emptyState, h, icon, relativeTime, userBubble } from "./ui.js";

const $ = (id) => document.getElementById(id);
const els = {
  app: $("app"),
  log: $("log"),
  form: $("composer"),
  input: $("composer-input"),
  send: $("send"),
  stop: $("stop"),
  sessions: $("session-list"),
  newSession: $("new-session"),
  tenant: $("tenant"),
  tenantForm: $("tenant-form"),
  status: $("connection"),
  statusText: $("connection-text"),
  banners: $("banners"),
  title: $("chat-title"),
  menu: $("menu-toggle"),
  sidebar: $("sidebar"),
  keyButton: $("key-button"),
  keyDialog: $("key-dialog"),
  keyForm: $("key-form"),
  keyInput: $("key-input"),
  keyReason: $("key-reason"),
  keyCancel: $("key-cancel"),
};

const ID_PATTERN = /^[A-Za-z0-9._:@-]{1,255}$/;
const local = {
  get: (name, fallback = "") => localStorage.getItem(`msev15.${name}`) ?? fallback,
  set: (name, value) => localStorage.setItem(`msev15.${name}`, value),
  titles() {
    try {
      return JSON.parse(localStorage.getItem("msev15.titles") || "{}");
    } catch {
      return {};
    }
  },
  title(tenant, id, value) {
    const all = this.titles();
    const key = `${tenant}\u0000${id}`;
    if (value === undefined) return all[key];
    if (value === null) delete all[key];
    else all[key] = value;
    localStorage.setItem("msev15.titles", JSON.stringify(all));
    return value;
  },
};

const state = {
  tenant: local.get("tenant", "default"),
  sessionId: "",
  saved: false, // does the current session exist on the server yet?
  active: null, // the answer in flight: { turn, via: "ws" | "sse", abort, resolve }
  socket: "connecting",
  httpOk: true,
  cards: new Map(),
};

function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(9));
  return `web-${Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("").slice(0, 14)}`;
}

function shortTitle(text) {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > 48 ? `${line.slice(0, 47)}…` : line;
}

// Connection state --------------------------------------------------------------------------

const socket = new ChatSocket({
  onEvent: (event) => onEvent(event),
  onState: (next) => {
    state.socket = next;
    if (next !== "open" && state.active?.via === "ws") {
      // The server cancels a turn whose client went away and keeps what was already said.
      state.active.turn.done({ message: state.active.turn.text, interrupted: true });
      state.active.turn.error("The connection dropped; the part of the answer shown above was kept.", "connection");
      finish();
    }
    paintStatus();
  },
});

let countdown = 0;
function paintStatus() {
  clearTimeout(countdown);
  let kind;
  let text;
  if (!state.httpOk && state.socket !== "open") {
    kind = "offline";
    text = "Offline — retrying";
  } else if (state.socket === "open") {
    kind = "ws";
    text = "Live";
  } else if (state.socket === "connecting" && socket.attempt === 0) {
    kind = "connecting";
    text = "Connecting…";
  } else {
    kind = "sse";
    text = "Live (HTTP)";
  }
  els.status.dataset.state = kind;
  els.statusText.textContent = text;
  const detail = {
    ws: "Connected: answers stream over a WebSocket.",
    sse: "The WebSocket is unavailable: answers stream over HTTP instead.",
    connecting: "Connecting to the service…",
    offline: "The service cannot be reached. Retrying automatically.",
  }[kind];
  els.status.title = detail;
  if (state.socket === "waiting" && kind !== "ws") {
    const left = Math.max(0, Math.round((socket.retryAt - Date.now()) / 1000));
    if (left > 0) els.status.title = `${detail} Reconnecting in ${left} s.`;
    countdown = setTimeout(paintStatus, 1000);
  }
}

function reachable(ok) {
  if (state.httpOk !== ok) {
    state.httpOk = ok;
    paintStatus();
  }
}

// Banners ---------------------------------------------------------------------------------

function banner(id, kind, text) {
  const existing = document.getElementById(`banner-${id}`);
  if (!text) return existing?.remove();
  const body = h("p", { text });
  if (existing) return existing.querySelector("p").replaceWith(body);
  const close = h("button", { type: "button", class: "icon-btn", "aria-label": "Dismiss", text: "×" });
  const node = h("div", { class: `banner ${kind}`, id: `banner-${id}`, role: "status" }, body, close);
  close.addEventListener("click", () => node.remove());
  els.banners.append(node);
}

async function checkReadiness() {
  try {
    const body = await api.readiness();
    reachable(true);
    const problems = Object.entries(body.checks ?? {})
      .filter(([, v]) => v !== "ok")
      .map(([k, v]) => `${k}: ${v}`);
    if (body.status === "unhealthy") banner("health", "error", `The service is not ready (${problems.join("; ")}). Answers may fail.`);
    else if (body.status === "degraded")
      banner("health", "warn", `Running with reduced features — ${(body.warnings?.length ? body.warnings : problems).join("; ")}.`);
    else banner("health");
  } catch {
    reachable(false);
  }
}

// Authentication --------------------------------------------------------------------------

let keyPrompt = null;
function askForKey(reason) {
  if (keyPrompt) return keyPrompt;
  els.keyReason.textContent = reason;
  els.keyInput.value = apiKey.get();
  keyPrompt = new Promise((resolve) => {
    const done = (saved) => {
      els.keyDialog.onclose = null;
      els.keyDialog.close();
      keyPrompt = null;
      resolve(saved);
    };
    els.keyDialog.onclose = () => done(false); // Esc closes the dialog without a button
    els.keyForm.onsubmit = (e) => {
      e.preventDefault();
      apiKey.set(els.keyInput.value.trim());
      socket.restart();
      done(true);
      refreshSessions();
      openSession(state.sessionId, { quiet: true });
    };
    els.keyCancel.onclick = () => done(false);
  });
  els.keyDialog.showModal();
  els.keyInput.focus();
  return keyPrompt;
}

/** Handle a failed API call in one place: 401 asks for the key, the rest becomes a banner. */
function apiFailed(error) {
  if (error?.status === 401) {
    askForKey("This service needs an API key. It is kept in this browser only.");
  } else if (error?.status === 403) {
    banner("auth", "error", "Your API key belongs to another shop (tenant). Change the tenant or the key.");
  } else if (error?.status) {
    reachable(true);
    banner("api", "error", error.message);
  } else {
    reachable(false);
  }
}

// Sessions --------------------------------------------------------------------------------

async function refreshSessions() {
  let found = [];
  try {
    found = (await api.sessions(state.tenant)).sessions;
    reachable(true);
    banner("auth");
  } catch (error) {
    apiFailed(error);
  }
  state.saved = found.some((s) => s.session_id === state.sessionId);
  const items = found.map((s) => sessionItem(s));
  if (!state.saved) items.unshift(sessionItem({ session_id: state.sessionId, message_count: 0 }));
  els.sessions.replaceChildren(...items);
}

function sessionItem(s) {
  const current = s.session_id === state.sessionId;
  const title = local.title(state.tenant, s.session_id) || (s.message_count ? `Conversation ${s.session_id.slice(-6)}` : "New conversation");
  const meta = s.message_count
    ? `${s.message_count} messages · ${relativeTime(s.last_activity)}`
    : "Not started yet";
  const open = h(
    "button",
    { type: "button", class: "session-open", "aria-current": current ? "true" : null, onclick: () => switchTo(s.session_id) },
    h("span", { class: "session-title", text: title }),
    h("span", { class: "session-meta", text: meta }),
  );
  const item = h("li", { class: `session${current ? " current" : ""}`, dataset: { sessionId: s.session_id } }, open);
  if (s.message_count) {
    const remove = h("button", { type: "button", class: "icon-btn session-delete", "aria-label": `Delete “${title}”` }, icon("trash"));
    let armed = 0;
    remove.addEventListener("click", async () => {
      if (!armed) {
        remove.classList.add("armed");
        remove.textContent = "Delete?";
        remove.setAttribute("aria-label", `Confirm: delete “${title}”`);
        armed = setTimeout(() => {
          armed = 0;
          remove.classList.remove("armed");
          remove.replaceChildren(icon("trash"));
          remove.setAttribute("aria-label", `Delete “${title}”`);
        }, 4000);
        return;
      }
      clearTimeout(armed);
      await deleteSession(s.session_id);
    });
    item.append(remove);
  }
  return item;
}

async function deleteSession(id) {
  if (id === state.sessionId) await stop();
  try {
    await api.remove(state.tenant, id);
  } catch (error) {
    if (error?.status !== 404) return apiFailed(error);
  }
  local.title(state.tenant, id, null);
  if (id === state.sessionId) {
    const rest = (await api.sessions(state.tenant).catch(() => ({ sessions: [] }))).sessions;
    await openSession(rest[0]?.session_id ?? newId());
  }
  await refreshSessions();
  els.input.focus();
}

async function switchTo(id) {
  if (id === state.sessionId) return closeNav();
  await stop();
  await openSession(id);
  await refreshSessions();
  closeNav();
  els.input.focus();
}

function showEmpty() {
  els.log.replaceChildren(emptyState((text) => sendMessage(text)));
}

async function openSession(id, { quiet = false } = {}) {
  state.sessionId = id;
  local.set(`session.${state.tenant}`, id);
  state.cards.clear();
  els.title.textContent = local.title(state.tenant, id) || "New conversation";
  if (!quiet) showEmpty();
  let body;
  try {
    body = await api.history(state.tenant, id);
    reachable(true);
  } catch (error) {
    if (error?.status === 404) {
      state.saved = false;
      return showEmpty();
    }
    return apiFailed(error);
  }
  if (id !== state.sessionId) return; // the user moved on while this loaded
  state.saved = true;
  const nodes = [];
  for (const message of body.messages) {
    if (message.role === "user") nodes.push(userBubble(message.content, message.timestamp));
    else nodes.push(AssistantTurn.fromHistory(message, { onApproval }).node);
  }
  // Pending approvals, when the service lists them with the history, get their cards back.
  const pending = body.pending_approvals ?? body.metadata?.pending_approvals ?? [];
  if (pending.length) {
    const turn = new AssistantTurn({ onApproval });
    for (const item of pending) state.cards.set(item.id, turn.approval(item));
    turn.done({ message: "" });
    nodes.push(turn.node);
  }
  els.log.replaceChildren(...(nodes.length ? nodes : [emptyState((text) => sendMessage(text))]));
  const firstUser = body.messages.find((m) => m.role === "user");
  if (firstUser && !local.title(state.tenant, id)) local.title(state.tenant, id, shortTitle(firstUser.content));
  els.title.textContent = local.title(state.tenant, id) || "New conversation";
  scrollDown(true);
}

// Sending and streaming ---------------------------------------------------------------------

function scrollDown(force = false) {
  const log = els.log;
  if (force || log.scrollHeight - log.scrollTop - log.clientHeight < 160) log.scrollTop = log.scrollHeight;
}

function setBusy(busy) {
  els.send.hidden = busy;
  els.stop.hidden = !busy;
  els.log.setAttribute("aria-busy", String(busy));
  els.app.dataset.busy = String(busy);
}

function onApproval(card, approve) {
  if (state.active) return false; // one answer at a time; the card stays pending
  run({ approvals: [{ id: card.id, approve }] });
  return true;
}

function onEvent(event) {
  const active = state.active;
  if (!active) return;
  const { turn } = active;
  switch (event.type) {
    case "token":
      turn.token(event.content);
      break;
    case "tool_call":
      turn.toolCall(event);
      break;
    case "tool_result":
      turn.toolResult(event);
      state.cards.get(event.id)?.result(event);
      break;
    case "approval_required":
      state.cards.set(event.id, turn.approval(event));
      break;
    case "done":
      turn.done(event);
      finish();
      break;
    case "error":
      turn.error(event.error || "Something went wrong.", event.code);
      if (event.code === "unauthorized") askForKey("The API key was refused. Enter a valid key.");
      finish();
      break;
    default:
      break;
  }
  scrollDown();
}

function finish() {
  const active = state.active;
  if (!active) return;
  state.active = null;
  setBusy(false);
  active.resolve();
  refreshSessions();
}

/** Send one chat request and stream its answer: WebSocket when open, else SSE. */
function run(extra) {
  const body = { session_id: state.sessionId, tenant_id: state.tenant, ...extra };
  const turn = new AssistantTurn({ onApproval });
  els.log.querySelector(".empty")?.remove();
  els.log.append(turn.node);
  scrollDown(true);
  setBusy(true);
  return new Promise((resolve) => {
    state.active = { turn, via: "ws", resolve };
    if (socket.send({ type: "chat", ...body })) return;
    const abort = new AbortController();
    state.active.via = "sse";
    state.active.abort = abort;
    streamSSE(body, onEvent, abort.signal)
      .then(() => {
        if (state.active?.turn === turn) {
          turn.error("The answer ended unexpectedly.", "connection");
          finish();
        }
      })
      .catch((error) => {
        if (state.active?.turn !== turn) return;
        if (error?.name === "AbortError") {
          turn.done({ message: turn.text, interrupted: true });
        } else if (error?.status) {
          turn.error(error.message, error.type);
          if (error.status === 401) askForKey("This service needs an API key. It is kept in this browser only.");
          if (error.status === 429) turn.error(`Please wait ${error.retryAfter || "a few"} s before sending again.`, "rate_limited");
        } else {
          reachable(false);
          turn.error("The service could not be reached. Check your connection and try again.", "connection");
        }
        finish();
      });
  });
}

async function sendMessage(text) {
  const message = text.trim();
  if (!message || state.active) return;
  els.input.value = "";
  autosize();
  if (!local.title(state.tenant, state.sessionId)) {
    els.title.textContent = local.title(state.tenant, state.sessionId, shortTitle(message));
  }
  els.log.querySelector(".empty")?.remove();
  // API.md: a new plain message declines whatever is still waiting for confirmation.
  for (const card of state.cards.values()) if (card.pending) card.setState("declined", "Declined: you sent a new message.");
  els.log.append(userBubble(message));
  await run({ message });
}

/** Stop the answer in flight: a `stop` frame on the WebSocket, an abort on SSE. */
async function stop() {
  const active = state.active;
  if (!active) return;
  const ended = new Promise((resolve) => {
    const previous = active.resolve;
    active.resolve = () => {
      previous();
      resolve();
    };
  });
  if (active.via === "sse") active.abort.abort();
  else if (!socket.send({ type: "stop" })) {
    active.turn.done({ message: active.turn.text, interrupted: true });
    finish();
  }
  await ended;
}

// Composer, tenant, navigation ---------------------------------------------------------------

function autosize() {
  els.input.style.height = "auto";
  els.input.style.height = `${Math.min(els.input.scrollHeight, 200)}px`;
}

els.form.addEventListener("submit", (e) => {
  e.preventDefault();
  sendMessage(els.input.value);
});
els.input.addEventListener("input", autosize);
els.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    sendMessage(els.input.value);
  }
});
els.stop.addEventListener("click", () => {
  stop();
  els.input.focus();
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && state.active && !els.keyDialog.open) stop();
  else if (e.key === "Escape") closeNav();
});

els.newSession.addEventListener("click", async () => {
  await stop();
  await openSession(newId());
  await refreshSessions();
  closeNav();
  els.input.focus();
});

els.tenantForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const tenant = els.tenant.value.trim() || "default";
  if (!ID_PATTERN.test(tenant)) {
    els.tenant.setAttribute("aria-invalid", "true");
    return;
  }
  els.tenant.removeAttribute("aria-invalid");
  if (tenant === state.tenant) return;
  await stop();
  state.tenant = tenant;
  local.set("tenant", tenant);
  await openSession(local.get(`session.${tenant}`) || newId());
  await refreshSessions();
});
els.tenant.addEventListener("change", () => els.tenantForm.requestSubmit());

function closeNav() {
  els.app.classList.remove("nav-open");
  els.menu.setAttribute("aria-expanded", "false");
}
els.menu.addEventListener("click", () => {
  const open = els.app.classList.toggle("nav-open");
  els.menu.setAttribute("aria-expanded", String(open));
  if (open) els.newSession.focus();
});
$("scrim").addEventListener("click", closeNav);

els.keyButton.addEventListener("click", () => askForKey("Enter the API key for this shop. Leave it empty to remove it."));

window.addEventListener("online", () => {
  socket.restart();
  checkReadiness();
});
window.addEventListener("offline", () => reachable(false));

// Start -------------------------------------------------------------------------------------

async function start() {
  els.tenant.value = state.tenant;
  if (document.body.dataset.provider === "offline") {
    banner("model", "info", "Demo mode: the built-in offline assistant is answering (no language model is configured).");
  }
  socket.connect();
  paintStatus();
  await openSession(local.get(`session.${state.tenant}`) || newId());
  await refreshSessions();
  checkReadiness();
  setInterval(checkReadiness, 60_000);
  els.app.dataset.ready = "true";
}

start();
