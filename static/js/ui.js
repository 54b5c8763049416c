// DOM building blocks of the chat page. Every piece of text goes in through textContent.

import { renderMarkdown } from "./markdown.js";

export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

const ICONS = {
  trash: "M4 7h16M9 7V4h6v3m-8 0 1 13h8l1-13M10 11v6m4-6v6",
  plus: "M12 5v14M5 12h14",
};

/** A small stroked SVG icon (no icon font or emoji font needed). */
export function icon(name) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "icon");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", ICONS[name]);
  svg.append(path);
  return svg;
}

const TOOL_LABELS = {
  get_current_time: "Checked the time",
  find_customer_orders: "Looked up orders",
  get_order: "Opened an order",
  create_order: "Placed an order",
  update_shipping_address: "Changed a shipping address",
  cancel_order: "Cancelled an order",
  request_return: "Requested a return",
  send_order_confirmation: "Sent an order confirmation",
  send_email: "Sent an email",
  search_products: "Searched products",
  get_product: "Opened a product",
  get_policy: "Read a policy",
  search_faq: "Searched the FAQ",
};

function pretty(value) {
  if (typeof value === "string") {
    try {
      return JSON.stringify(JSON.parse(value), null, 2);
    } catch {
      return value;
    }
  }
  return JSON.stringify(value ?? {}, null, 2);
}

function brief(args) {
  const parts = Object.entries(args ?? {})
    .filter(([, v]) => v !== null && typeof v !== "object")
    .map(([, v]) => String(v));
  const text = parts.join(", ");
  return text.length > 60 ? `${text.slice(0, 57)}…` : text;
}

export function timeLabel(iso) {
  const when = iso ? new Date(iso) : new Date();
  if (Number.isNaN(when.getTime())) return "";
  return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function relativeTime(iso) {
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (!Number.isFinite(seconds)) return "";
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

/** A compact, expandable step for one tool call: name, arguments, then result or error. */
export class ToolStep {
  constructor({ id, name, arguments: args, ok }) {
    this.id = id;
    this.status = h("span", { class: "step-status", text: "running…" });
    this.body = h(
      "div",
      { class: "step-body" },
      h("div", { class: "step-label", text: "Tool" }),
      h("code", { class: "step-name", text: name }),
      h("div", { class: "step-label", text: "Arguments" }),
      h("pre", { class: "step-args", text: pretty(args) }),
    );
    this.node = h(
      "details",
      { class: "tool-step", dataset: { tool: name, state: "running" } },
      h(
        "summary",
        {},
        h("span", { class: "step-icon", "aria-hidden": "true" }),
        h("span", { class: "step-title", text: TOOL_LABELS[name] ?? name }),
        h("span", { class: "step-brief", text: brief(args) }),
        this.status,
      ),
      this.body,
    );
    if (ok !== undefined) this.finish({ ok, fromHistory: true });
  }

  finish({ ok, content, error, fromHistory }) {
    this.node.dataset.state = ok ? "ok" : "failed";
    this.status.textContent = ok ? "done" : "failed";
    if (fromHistory) return;
    this.body.append(
      h("div", { class: "step-label", text: ok ? "Result" : "Error" }),
      h("pre", { class: ok ? "step-result" : "step-error", text: ok ? pretty(content ?? "") : error ?? "" }),
    );
  }
}

/** The error of a declined action's tool_result (API.md "Confirmation"). */
const DECLINED = "declined by the customer";

/** A card asking the customer to confirm a consequential action. */
export class ApprovalCard {
  constructor({ id, name, arguments: args, summary }, onAnswer) {
    this.id = id;
    this.outcome = h("p", { class: "approval-outcome", role: "status" });
    this.confirm = h("button", { type: "button", class: "btn primary", text: "Confirm", onclick: () => this.answer(true) });
    this.decline = h("button", { type: "button", class: "btn", text: "Decline", onclick: () => this.answer(false) });
    this.onAnswer = onAnswer;
    this.node = h(
      "section",
      { class: "approval-card", dataset: { approvalId: id, state: "pending" }, "aria-label": "Confirmation needed" },
      h("p", { class: "approval-kicker", text: "Please confirm" }),
      h("p", { class: "approval-summary", text: summary || name }),
      h(
        "details",
        { class: "approval-details" },
        h("summary", { text: "Details" }),
        h("code", { text: name }),
        h("pre", { text: pretty(args) }),
      ),
      h("div", { class: "approval-actions" }, this.confirm, this.decline),
      this.outcome,
    );
  }

  answer(approve) {
    if (this.node.dataset.state !== "pending") return;
    if (this.onAnswer(this, approve) === false) return; // busy: the card stays pending
    this.setState(approve ? "confirmed" : "declined", approve ? "Confirmed — working on it…" : "Declined.");
  }

  setState(state, text) {
    this.node.dataset.state = state;
    this.outcome.textContent = text;
    const open = state === "pending";
    this.confirm.disabled = !open;
    this.decline.disabled = !open;
  }

  get pending() {
    return this.node.dataset.state === "pending";
  }

  get answering() {
    return this.node.dataset.state === "answering";
  }

  /** The customer typed a message instead of pressing a button: the service reads it and decides. */
  awaitAnswer() {
    this.setState("answering", "Reading your reply…");
  }

  /** The tool result that followed the decision: a typed "yes" ends here exactly like Confirm. */
  result({ ok, error }) {
    if (ok) this.setState("done", "Done.");
    else if (error === DECLINED) this.setState("declined", "Declined: nothing was changed.");
    else this.setState("failed", error || "It did not work.");
  }
}

export function userBubble(text, iso) {
  return h(
    "article",
    { class: "msg user", "aria-label": "You said" },
    h("div", { class: "bubble" }, h("p", { class: "plain", text })),
    h("time", { class: "meta", datetime: iso ?? new Date().toISOString(), text: timeLabel(iso) }),
  );
}

/**
 * One assistant answer, built as events arrive: text blocks and tool steps in order.
 * Markdown is re-rendered at most once per animation frame while tokens stream.
 */
export class AssistantTurn {
  constructor({ onApproval } = {}) {
    this.onApproval = onApproval;
    this.steps = new Map();
    this.cards = [];
    this.text = "";
    this.blockText = "";
    this.block = null;
    this.frame = 0;
    this.content = h("div", { class: "bubble" });
    this.meta = h("div", { class: "meta" });
    this.typing = h("div", { class: "typing", "aria-hidden": "true" }, h("span"), h("span"), h("span"));
    this.content.append(this.typing);
    this.node = h(
      "article",
      { class: "msg assistant", "aria-label": "Assistant said", dataset: { state: "streaming" } },
      h("div", { class: "avatar", "aria-hidden": "true", text: "✦" }),
      h("div", { class: "msg-main" }, this.content, this.meta),
    );
  }

  token(piece) {
    this.typing.remove();
    if (!this.block) {
      this.block = h("div", { class: "md" });
      this.blockText = "";
      this.content.append(this.block);
    }
    this.text += piece;
    this.blockText += piece;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.paint());
  }

  paint() {
    this.frame = 0;
    if (this.block) this.block.replaceChildren(renderMarkdown(this.blockText));
  }

  toolCall(event) {
    this.paint();
    this.block = null; // text after a tool goes below it
    const step = new ToolStep(event);
    this.steps.set(event.id, step);
    this.content.insertBefore(step.node, this.typing.isConnected ? this.typing : null);
  }

  toolResult(event) {
    if (!this.steps.has(event.id)) this.toolCall({ id: event.id, name: event.name, arguments: {} });
    this.steps.get(event.id).finish(event);
  }

  approval(event) {
    this.paint();
    this.block = null;
    const card = new ApprovalCard(event, this.onApproval);
    this.cards.push(card);
    this.content.insertBefore(card.node, this.typing.isConnected ? this.typing : null);
    return card;
  }

  /**
   * The connection dropped while this answer streamed (`lost`), or it picked up again. The note is
   * for the eyes: the connection status, a live region, says it to screen readers.
   */
  reconnecting(lost) {
    if (lost && !this.linkNote) {
      this.node.dataset.link = "lost";
      this.linkNote = h(
        "span",
        { class: "link-note", "aria-hidden": "true" },
        h("span", { class: "link-dot" }),
        "Connection lost — reconnecting…",
      );
      this.meta.append(this.linkNote);
    } else if (!lost && this.linkNote) {
      delete this.node.dataset.link;
      this.linkNote.remove();
      this.linkNote = null;
    }
  }

  /** The final text from `done`; re-render it whole (the server's text is authoritative). */
  done({ message, interrupted, timestamp }) {
    this.typing.remove();
    if (message !== undefined && message !== this.text && !this.steps.size && !this.cards.length) {
      this.text = message;
      this.blockText = message;
      if (!this.block && message) {
        this.block = h("div", { class: "md" });
        this.content.append(this.block);
      }
    }
    this.paint();
    if (!this.text && !this.steps.size && !this.cards.length) {
      this.content.append(h("p", { class: "muted", text: interrupted ? "(stopped before any answer)" : "(no answer)" }));
    }
    this.node.dataset.state = interrupted ? "interrupted" : "done";
    this.meta.replaceChildren(h("time", { datetime: timestamp ?? new Date().toISOString(), text: timeLabel(timestamp) }));
    if (interrupted) this.meta.append(h("span", { class: "tag", text: "Stopped" }));
  }

  error(message, code) {
    this.typing.remove();
    this.paint();
    this.node.dataset.state = "error";
    this.content.append(h("p", { class: "error-note", role: "alert", dataset: { code: code ?? "" }, text: message }));
  }

  /** Build a finished turn from a stored history message. */
  static fromHistory(message, options) {
    const turn = new AssistantTurn(options);
    for (const call of message.tool_calls ?? []) turn.toolCall(call); // `ok` is stored: the step shows done/failed
    if (message.content) turn.token(message.content);
    turn.done({ message: message.content, interrupted: message.interrupted, timestamp: message.timestamp });
    return turn;
  }
}

export function emptyState(onPick) {
  const examples = [
    "Where is my order ORD-1002? I'm alice@example.com",
    "Cancel ORD-1001, I'm alice@example.com",
    "What is your return policy?",
    "What time is it?",
  ];
  return h(
    "div",
    { class: "empty" },
    h("div", { class: "empty-mark", "aria-hidden": "true", text: "✦" }),
    h("h2", { text: "How can we help today?" }),
    h("p", { text: "Ask about an order, a product, shipping or returns. Each step the assistant takes is shown as it happens." }),
    h(
      "ul",
      { class: "suggestions", "aria-label": "Example questions" },
      ...examples.map((text) => h("li", {}, h("button", { type: "button", class: "chip", text, onclick: () => onPick(text) }))),
    ),
  );
}
