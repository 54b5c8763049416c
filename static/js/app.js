// The chat page: wires the API, the WebSocket/SSE transports and the DOM together.

import { api, apiKey, ChatSocket, clientToken, credential, resumeSSE, streamSSE, tokenClaims } from "./api.js";
import { AssistantTurn, emptyState, h, icon, relativeTime, userBubble } from "./ui.js";

/**
 * A client token in the address (`/#token=...`, from the shop's link) is kept in this browser and
 * taken out of the address at once, so it neither stays in the history nor gets copied with the URL.
 */
function takeLinkToken() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  const token = params.get("token");
  if (token === null) return false;
  if (token.trim()) clientToken.set(token.trim(), "client");
  params.delete("token");
  const rest = params.toString();
  const { pathname, search } = window.location;
  window.history.replaceState(window.history.state, "", `${pathname}${search}${rest ? `#${rest}` : ""}`);
  return true;
}
takeLinkToken();

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
  advanced: $("advanced"),
  identity: $("identity"),
  tenantHint: $("tenant-hint"),
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
  // Who the page is: mode "key" (staff API key), "token" (kind "client" or "visitor"), "open"
  // (a development server without keys) or "none" (reason "expired" or "no-link": the gate is shown).
  auth: { mode: "pending" },
  sessionId: "",
  saved: false, // does the current session exist on the server yet?
  active: null, // the answer in flight (see run)
  lastTurnId: null, // the last answer this page saw to its end
  reconnectedUntil: 0, // the "Reconnected" notice shows until then
  socket: "connecting",
  httpOk: true,
  cards: new Map(),
  view: 0, // bumped by whatever takes over the log: a late history answer must not replace it
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
    const active = state.active;
    if (active?.via === "ws") {
      // The answer goes on on the server whatever happens to the socket: pick it up again.
      if (next === "open") reattach(active);
      else linkLost(active);
    }
    paintStatus();
  },
});

let countdown = 0;
function paintStatus() {
  clearTimeout(countdown);
  let kind;
  let text;
  if (state.auth.mode === "none") {
    kind = "locked";
    text = "Not signed in";
  } else if (state.active?.lost) {
    kind = "reconnecting";
    text = "Reconnecting…";
  } else if (Date.now() < state.reconnectedUntil) {
    kind = "reconnected";
    text = "Reconnected";
  } else if (navigator.onLine === false || (!state.httpOk && state.socket !== "open")) {
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
    locked: "Open the chat from the shop's website to start.",
    reconnecting: "The connection dropped. The answer goes on: it will continue here where it stopped.",
    reconnected: "Back online: the answer continued where it stopped.",
  }[kind];
  els.status.title = detail;
  if (kind === "reconnected") countdown = setTimeout(paintStatus, state.reconnectedUntil - Date.now() + 50);
  else if (state.socket === "waiting" && kind !== "ws") {
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

const GATES = {
  "no-link": {
    title: "Open the chat from the shop",
    text: "This chat starts from the shop's website: please use the chat link there (for example on your account or order page).",
  },
  expired: {
    title: "This chat link has expired",
    text: "For your security, chat links only work for a while. Please open the chat again from the shop's website to continue.",
  },
};
const PLACEHOLDER = els.input.placeholder;
const EARLY_MS = 30_000; // a token this close to its expiry is treated as expired
let expiryTimer = 0;

/** Work out who the page is: the staff key, the link's client token, a visitor token, or nobody. */
async function signIn() {
  if (apiKey.get()) return adopt({ mode: "key", tenant: local.get("tenant", "default") });
  const held = clientToken.get();
  const claims = held && tokenClaims(held.token);
  if (claims && claims.expiresAt - EARLY_MS > Date.now()) return adopt({ mode: "token", kind: held.kind, ...claims });
  if (held?.kind === "client") return adopt({ mode: "none", reason: "expired" });
  // No token, or an old visitor token: a new visitor token (a new visitor starts afresh).
  clientToken.clear();
  let issued;
  try {
    issued = await api.visitorToken();
  } catch (error) {
    if (error?.status !== 404) throw error; // unreachable: start() tries again
    // Public chat is off. A development server without API keys still answers without credentials.
    try {
      await api.sessions(local.get("tenant", "default"));
      return adopt({ mode: "open", tenant: local.get("tenant", "default") });
    } catch (refused) {
      if (refused?.status !== 401) throw refused;
      return adopt({ mode: "none", reason: "no-link" });
    }
  }
  clientToken.set(issued.token, "visitor");
  const claimsNow = tokenClaims(issued.token);
  return adopt({
    mode: "token",
    kind: "visitor",
    tenant: issued.tenant_id,
    user: issued.user_id,
    email: null,
    expiresAt: claimsNow?.expiresAt ?? Date.parse(issued.expires_at),
  });
}

function adopt(auth) {
  state.auth = auth;
  if (auth.tenant) state.tenant = auth.tenant;
  clearTimeout(expiryTimer);
  if (auth.mode === "token" && Number.isFinite(auth.expiresAt)) {
    const left = Math.min(2 ** 31 - 1, Math.max(0, auth.expiresAt - EARLY_MS - Date.now()));
    expiryTimer = setTimeout(onTokenExpired, left);
  }
  els.tenant.disabled = auth.mode === "token" || auth.mode === "none";
  els.tenant.value = state.tenant;
  els.tenantHint.textContent = {
    token: "Set by the chat link. An API key lets staff choose.",
    none: "Staff: enter an API key to choose a shop.",
  }[auth.mode] ?? "Letters, digits and . _ : @ -";
  els.identity.textContent = {
    key: `Staff view: every conversation of “${state.tenant}”`,
    open: `Development server: every conversation of “${state.tenant}”`,
    token: auth.kind !== "client" ? "Chatting as a guest" : auth.email ? `Signed in as ${auth.email}` : "Signed in by the shop",
    none: "",
  }[auth.mode];
  els.identity.hidden = !els.identity.textContent;
  const locked = auth.mode === "none";
  els.input.placeholder = locked ? "Open the chat from the shop's website to write here" : PLACEHOLDER;
  els.input.disabled = locked;
  els.send.disabled = locked;
  els.newSession.disabled = locked;
  paintStatus();
  return auth;
}

/** The page when no token can be had: why, and what to do (staff may still use an API key). */
function lock(reason = state.auth.reason) {
  if (state.auth.mode !== "none" || state.auth.reason !== reason) adopt({ mode: "none", reason });
  socket.disconnect();
  const gate = GATES[reason] ?? GATES["no-link"];
  els.title.textContent = "Support chat";
  els.sessions.replaceChildren();
  els.log.replaceChildren(
    h(
      "div",
      { class: "empty gate", dataset: { reason } },
      h("div", { class: "empty-mark", "aria-hidden": "true", text: "✦" }),
      h("h2", { text: gate.title }),
      h("p", { text: gate.text }),
      h("button", {
        type: "button",
        class: "link-btn",
        text: "Shop staff: use an API key…",
        onclick: () => {
          els.advanced.open = true;
          askForKey("Enter the shop's API key to see its conversations. It is kept in this browser only.");
        },
      }),
    ),
  );
}

/** Sign in again and reopen the conversation (after a new key, a new link or a refused token). */
let reauth = null;
function reauthenticate() {
  reauth ??= (async () => {
    await stop();
    try {
      await signIn();
    } catch {
      reachable(false);
      return;
    }
    if (state.auth.mode === "none") return lock();
    socket.restart();
    await openSession(local.get(sessionKey()) || newId());
    await refreshSessions();
  })().finally(() => {
    reauth = null;
  });
  return reauth;
}

let lastRenewal = 0;
/**
 * The server refused the credential (401): ask for the key, renew a visitor, or ask for a new link.
 * A refusal of a credential the page no longer uses (several calls failed at once) changes nothing.
 */
function credentialRefused(error) {
  const { mode, kind } = state.auth;
  if (error?.credential !== undefined && error.credential !== (credential()?.value ?? null)) return;
  if (mode === "key") {
    askForKey("The API key was refused. Enter a valid key, or leave it empty to remove it.");
  } else if (mode === "token" && kind === "client") {
    stop().then(() => lock("expired")); // expired, or signed with a secret this service no longer has
  } else if (mode !== "none" && Date.now() - lastRenewal > 10_000) {
    lastRenewal = Date.now(); // a visitor token (or open mode) refused: once, a new visitor token
    if (kind === "visitor") clientToken.clear();
    reauthenticate();
  } else if (mode !== "none") {
    // Refused again at once: hosts that do not share CLIENT_TOKEN_SECRET, most likely.
    banner("auth", "error", "The service did not accept this chat. Please reload the page in a moment.");
  }
}

function onTokenExpired() {
  if (state.active) {
    expiryTimer = setTimeout(onTokenExpired, 5_000); // let the answer in flight finish first
    return;
  }
  if (state.auth.kind === "visitor") {
    clientToken.clear();
    reauthenticate();
  } else {
    lock("expired");
  }
}

function sessionKey() {
  return state.auth.mode === "token" ? `session.${state.tenant}/${state.auth.user}` : `session.${state.tenant}`;
}

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
      done(true);
      reauthenticate();
    };
    els.keyCancel.onclick = () => done(false);
  });
  els.keyDialog.showModal();
  els.keyInput.focus();
  return keyPrompt;
}

/** Handle a failed API call in one place: 401 goes to credentialRefused, the rest becomes a banner. */
function apiFailed(error) {
  if (error?.status === 401) {
    credentialRefused(error);
  } else if (error?.status === 403) {
    const text =
      state.auth.mode === "key"
        ? "Your API key belongs to another shop (tenant). Change the tenant or the key."
        : "This chat link does not give access to that.";
    banner("auth", "error", text);
  } else if (error?.status) {
    reachable(true);
    banner("api", "error", error.message);
  } else {
    reachable(false);
  }
}

// Sessions --------------------------------------------------------------------------------

async function refreshSessions() {
  if (state.auth.mode === "none") return;
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
  if (state.auth.mode === "none") return;
  state.sessionId = id;
  local.set(sessionKey(), id);
  state.cards.clear();
  els.title.textContent = local.title(state.tenant, id) || "New conversation";
  if (!quiet) showEmpty();
  const view = ++state.view;
  const current = () => id === state.sessionId && view === state.view; // nobody moved on meanwhile
  let body;
  try {
    body = await api.history(state.tenant, id);
    reachable(true);
  } catch (error) {
    if (error?.status === 404) {
      if (!current()) return;
      state.saved = false;
      return showEmpty();
    }
    return apiFailed(error);
  }
  if (!current()) return; // the user moved on, or sent a message, while this loaded
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
  if (!active || !inOrder(active, event)) return;
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
      if (event.code === "not_found" && event.seq === undefined && active.resumed && active.via === "ws") {
        gone(active); // the socket refused the resume: the answer is no longer kept
        return;
      }
      turn.error(event.error || "Something went wrong.", event.code);
      if (event.code === "unauthorized") credentialRefused();
      finish();
      break;
    default:
      break;
  }
  scrollDown();
}

/**
 * Is this the next event of the answer in flight? Every event of an answer carries its `turn_id`
 * and its `seq` (1, 2, 3… without gaps): one already shown (a replay after a reconnect overlaps
 * it) or of another answer is dropped; a gap means one went missing, so the answer is asked for
 * again after the last one shown. An event without a position (a refusal before any answer
 * began) always counts.
 */
function inOrder(active, event) {
  if (typeof event.seq !== "number" || typeof event.turn_id !== "string") return true;
  if (active.turnId === null) {
    if (event.turn_id === state.lastTurnId) {
      // An answer this page already ended (one stopped here while the service went on). Asked for
      // the session's latest answer, getting that one means this message never began.
      if (active.resumed) gone(active);
      return false;
    }
    active.turnId = event.turn_id;
  } else if (event.turn_id !== active.turnId) {
    return false;
  }
  if (event.seq <= active.seq) return false;
  if (event.seq > active.seq + 1) {
    relink(active);
    return false;
  }
  active.seq = event.seq;
  active.attempts = 0;
  return true;
}

function finish() {
  const active = state.active;
  if (!active) return;
  // A card the answer did not decide (the turn failed before it) is still pending on the server.
  for (const card of state.cards.values()) if (card.answering) card.setState("pending", "");
  clearTimeout(active.retry);
  active.turn.reconnecting(false);
  if (active.turnId !== null) state.lastTurnId = active.turnId;
  state.active = null;
  setBusy(false);
  paintStatus();
  active.resolve();
  refreshSessions();
}

// Reconnecting to the answer in flight ----------------------------------------------------------
//
// An answer goes on on the server whatever happens to the connection that asked for it. When that
// connection drops, the page asks for the rest: the events after the last one it showed (API.md
// "Reconnecting to an answer in flight"), on the reopened socket with a `resume` frame, else over
// HTTP, retrying with backoff until the network is back.

const SOCKET_GRACE_MS = 5_000; // how long a dropped socket may take to come back before HTTP takes over
const NOTICE_MS = 5_000; // how long "Reconnected" shows

/** The connection of the answer in flight dropped: say so, and pick the answer up again. */
function linkLost(active) {
  if (state.active !== active || active.lost) return;
  active.lost = true;
  active.turn.reconnecting(true);
  paintStatus();
  reattach(active);
}

/** Drop a connection that cannot be trusted any more (the network changed, an event went missing). */
function relink(active) {
  if (state.active !== active || active.lost) return;
  if (active.via === "ws") {
    socket.restart(); // its state changes come back through linkLost and reattach
    return;
  }
  const link = active.abort;
  active.abort = null;
  link?.abort();
  active.attempts = 0;
  linkLost(active);
}

/** One try to pick the answer up again: on the socket once it is open, else over HTTP (with backoff). */
function reattach(active) {
  if (state.active !== active || !active.lost) return;
  clearTimeout(active.retry);
  if (active.via === "ws" && active.turnId !== null) {
    const resume = {
      type: "resume",
      session_id: active.sessionId,
      tenant_id: active.tenant,
      turn_id: active.turnId,
      after: active.seq,
    };
    if (socket.send(resume)) {
      active.resumed = true;
      reconnected(active);
      return;
    }
    // The socket reconnects by itself, and its "open" comes back here; HTTP if it stays away.
    active.waitSince ||= Date.now();
    const left = active.waitSince + SOCKET_GRACE_MS - Date.now();
    if (left > 0 && state.socket !== "unsupported") {
      active.retry = setTimeout(() => reattach(active), left);
      return;
    }
  }
  // Over HTTP (the socket never knew the answer's id, or is not coming back).
  active.via = "sse";
  const delay = active.attempts ? Math.min(15_000, 500 * 2 ** (active.attempts - 1)) * (0.75 + Math.random() * 0.5) : 0;
  active.attempts += 1;
  active.retry = setTimeout(() => resumeOverHttp(active), delay);
}

function resumeOverHttp(active) {
  if (state.active !== active || !active.lost) return;
  active.resumed = true;
  // Without an event yet, the position is unknown: the session's running (or latest) answer.
  const position = active.turnId === null ? "" : `${active.turnId}:${active.seq}`;
  const where = { tenant: active.tenant, sessionId: active.sessionId, position };
  follow(active, (signal) => resumeSSE(where, onEvent, signal, () => reconnected(active)));
}

/** The answer streams again. */
function reconnected(active) {
  if (state.active !== active) return;
  active.lost = false;
  active.waitSince = 0;
  active.turn.reconnecting(false);
  state.httpOk = true;
  state.reconnectedUntil = Date.now() + NOTICE_MS;
  paintStatus();
}

/**
 * The answer can no longer be replayed (it ended longer ago than the service keeps answers, or
 * it never began): show the history, which has what the service kept. A message that did not
 * reach the service goes back into the message box.
 */
async function gone(active) {
  if (state.active !== active) return;
  const link = active.abort;
  active.abort = null;
  finish();
  link?.abort();
  state.reconnectedUntil = Date.now() + NOTICE_MS;
  paintStatus();
  if (active.sessionId !== state.sessionId) return;
  await openSession(active.sessionId, { quiet: true });
  const { message } = active.body;
  if (active.turnId !== null || !message || active.sessionId !== state.sessionId) return;
  const said = [...els.log.querySelectorAll(".msg.user .plain")].at(-1)?.textContent;
  if (said === message) return;
  if (!els.input.value) {
    els.input.value = message;
    autosize();
  }
  banner("resend", "warn", "Your last message did not reach the service. It is back in the message box: please send it again.");
}

/** Read the answer over one HTTP request until it ends; a request that drops is picked up again. */
async function follow(active, connect) {
  active.abort?.abort();
  const abort = new AbortController();
  active.abort = abort;
  const current = () => state.active === active && active.abort === abort;
  const again = () => (active.lost ? reattach(active) : linkLost(active));
  try {
    await connect(abort.signal);
    if (current()) again(); // the body ended (or stalled) before the answer's `done`
  } catch (error) {
    if (!current()) return; // finished, stopped, or replaced by a newer request
    const { turn } = active;
    if (!error?.status) {
      reachable(false);
      again(); // the network: try again
    } else if (!active.resumed) {
      // The chat itself was refused: nothing began.
      turn.error(error.message, error.type);
      if (error.status === 401) credentialRefused(error);
      if (error.status === 429) turn.error(`Please wait ${error.retryAfter || "a few"} s before sending again.`, "rate_limited");
      finish();
    } else if (error.status === 404) {
      gone(active);
    } else if (error.status === 401 || error.status === 403) {
      turn.error(error.message, error.type);
      if (error.status === 401) credentialRefused(error);
      finish();
    } else {
      again(); // busy or failing for now (429, 503…): later
    }
  }
}

/** Send one chat request and stream its answer: WebSocket when open, else SSE. */
function run(extra) {
  const body = { session_id: state.sessionId, tenant_id: state.tenant, ...extra };
  const turn = new AssistantTurn({ onApproval });
  state.view += 1; // the log is this answer's now
  els.log.querySelector(".empty")?.remove();
  els.log.append(turn.node);
  scrollDown(true);
  setBusy(true);
  return new Promise((resolve) => {
    const active = {
      turn,
      resolve,
      body,
      tenant: state.tenant,
      sessionId: state.sessionId,
      via: "ws", // "ws" | "sse": where the answer streams (or will resume)
      turnId: null, // the answer's id and the `seq` of the last event shown (see inOrder)
      seq: 0,
      lost: false, // the connection dropped; the page is picking the answer up again
      resumed: false, // asked for the answer again at least once
      attempts: 0, // HTTP resumes tried since the last event
      waitSince: 0, // when the page started to wait for the socket to come back
      retry: 0,
      abort: null, // the HTTP request in flight
    };
    state.active = active;
    if (socket.send({ type: "chat", ...body })) return;
    active.via = "sse";
    follow(active, (signal) => streamSSE(body, onEvent, signal));
  });
}

async function sendMessage(text) {
  const message = text.trim();
  if (!message || state.active || state.auth.mode === "none") return;
  els.input.value = "";
  autosize();
  banner("resend");
  if (!local.title(state.tenant, state.sessionId)) {
    els.title.textContent = local.title(state.tenant, state.sessionId, shortTitle(message));
  }
  els.log.querySelector(".empty")?.remove();
  // API.md: the service reads a plain message sent while actions wait: a typed "yes" approves them,
  // anything else declines them. The page does not guess: each card waits for its tool_result.
  for (const card of state.cards.values()) if (card.pending) card.awaitAnswer();
  els.log.append(userBubble(message));
  await run({ message });
}

/**
 * Stop the answer in flight: a `stop` frame on the socket that started it, else the stop endpoint
 * (an answer outlives its connection, so dropping the connection alone would not stop it).
 */
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
  if (active.via === "ws" && !active.resumed && !active.lost && socket.send({ type: "stop" })) return ended;
  api.stop(active.tenant, active.sessionId).catch(() => {
    if (state.active !== active) return;
    // The service cannot be told: here the answer ends now (it may go on and be kept there).
    const link = active.abort;
    active.abort = null;
    active.turn.done({ message: active.turn.text, interrupted: true });
    finish();
    link?.abort();
  });
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
  if (tenant === state.tenant || els.tenant.disabled) return;
  await stop();
  state.tenant = tenant;
  local.set("tenant", tenant);
  adopt({ ...state.auth, tenant });
  await openSession(local.get(sessionKey()) || newId());
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

els.keyButton.addEventListener("click", () =>
  askForKey("Staff only: a shop's API key shows every conversation of the shop. Leave it empty to remove it."),
);

// A new link opened in this tab changes only the fragment: sign in with its token.
window.addEventListener("hashchange", () => {
  if (takeLinkToken()) reauthenticate();
});

// Back online: connections opened before may be dead (as Chromium fails requests when the network
// changes), so the socket starts afresh and an answer streaming over HTTP is picked up again at once.
window.addEventListener("online", () => {
  if (state.auth.mode !== "none" && state.auth.mode !== "pending") socket.restart();
  const active = state.active;
  if (active?.via === "sse" && active.lost) {
    active.attempts = 0;
    reattach(active);
  } else if (active?.via === "sse") {
    relink(active);
  }
  checkReadiness();
});
window.addEventListener("offline", () => reachable(false));

// Start -------------------------------------------------------------------------------------

let retry = 1_000;
async function begin() {
  try {
    await signIn();
  } catch {
    reachable(false); // the service is unreachable: try again, a little later each time
    setTimeout(begin, retry);
    retry = Math.min(30_000, retry * 2);
    return;
  }
  reachable(true);
  if (state.auth.mode === "none") {
    lock();
  } else {
    socket.connect();
    await openSession(local.get(sessionKey()) || newId());
    await refreshSessions();
  }
  els.app.dataset.ready = "true";
}

async function start() {
  els.tenant.value = state.tenant;
  if (document.body.dataset.provider === "offline") {
    banner("model", "info", "Demo mode: the built-in offline assistant is answering (no language model is configured).");
  }
  paintStatus();
  await begin();
  checkReadiness();
  setInterval(checkReadiness, 60_000);
}

start();
