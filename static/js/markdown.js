// Safe markdown: model and customer text become DOM nodes built with textContent, never HTML.
// Supported: paragraphs, headings, lists, quotes, fenced code, tables, rules, **bold**,
// *italic*, `code`, [links](https://...) and bare http(s) links. Anything else stays text.

const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);

const INLINE = new RegExp(
  [
    "(?<code>`+)(?<codeText>[\\s\\S]+?)\\k<code>",
    "\\*\\*(?<bold>[^*\\n][\\s\\S]*?)\\*\\*",
    "__(?<bold2>[^_\\n][\\s\\S]*?)__",
    "(?<![\\w*])\\*(?<em>[^*\\s](?:[^*\\n]*[^*\\s])?)\\*(?![\\w*])",
    "(?<![\\w_])_(?<em2>[^_\\s](?:[^_\\n]*[^_\\s])?)_(?![\\w_])",
    "~~(?<del>[^~\\n]+)~~",
    "\\[(?<linkText>[^\\]\\n]+)\\]\\((?<linkUrl>[^)\\s]+)\\)",
    "(?<bare>https?:\\/\\/[^\\s<>()]+[^\\s<>().,;:!?'\"\\]])",
  ].join("|"),
  "g",
);

/** A URL we are willing to put in href, or null (javascript:, data: and friends are refused). */
export function safeUrl(raw) {
  try {
    const url = new URL(raw, window.location.href);
    return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}

function link(text, href) {
  const a = document.createElement("a");
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  a.textContent = text;
  return a;
}

/** Append inline markdown of `text` to `parent`. */
export function renderInline(text, parent) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(text.slice(last, m.index));
    const g = m.groups;
    if (g.code) {
      const code = document.createElement("code");
      code.textContent = g.codeText.trim() || g.codeText;
      parent.append(code);
    } else if (g.bold ?? g.bold2) {
      const el = document.createElement("strong");
      renderInline(g.bold ?? g.bold2, el);
      parent.append(el);
    } else if (g.em ?? g.em2) {
      const el = document.createElement("em");
      renderInline(g.em ?? g.em2, el);
      parent.append(el);
    } else if (g.del) {
      const el = document.createElement("del");
      el.textContent = g.del;
      parent.append(el);
    } else if (g.linkText) {
      const href = safeUrl(g.linkUrl);
      parent.append(href ? link(g.linkText, href) : m[0]);
    } else if (g.bare) {
      const href = safeUrl(g.bare);
      parent.append(href ? link(g.bare, href) : g.bare);
    }
    last = m.index + m[0].length;
  }
  if (last < text.length) parent.append(text.slice(last));
}

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function paragraph(lines) {
  const p = el("p");
  lines.forEach((line, i) => {
    if (i) p.append(el("br"));
    renderInline(line, p);
  });
  return p;
}

const RE = {
  fence: /^\s*(```|~~~)\s*([\w+-]*)\s*$/,
  heading: /^(#{1,6})\s+(.*?)\s*#*\s*$/,
  ul: /^\s*[-*+]\s+(.*)$/,
  ol: /^\s*(\d{1,9})[.)]\s+(.*)$/,
  quote: /^\s*>\s?(.*)$/,
  rule: /^\s*([-*_])(\s*\1){2,}\s*$/,
  tableSep: /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/,
};

function cells(row) {
  return row.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
}

function table(header, rows) {
  const t = el("table");
  const head = el("thead");
  const tr = el("tr");
  for (const cell of cells(header)) {
    const th = el("th");
    renderInline(cell, th);
    tr.append(th);
  }
  head.append(tr);
  const body = el("tbody");
  for (const row of rows) {
    const r = el("tr");
    for (const cell of cells(row)) {
      const td = el("td");
      renderInline(cell, td);
      r.append(td);
    }
    body.append(r);
  }
  t.append(head, body);
  const wrap = el("div", "table-wrap");
  wrap.append(t);
  return wrap;
}

/** Markdown text → a DocumentFragment of safe nodes. An unclosed code fence (mid-stream) still renders. */
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  let para = [];
  const flush = () => {
    if (para.length) out.append(paragraph(para));
    para = [];
  };
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if ((m = line.match(RE.fence))) {
      flush();
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(m[1])) body.push(lines[i++]);
      i += 1;
      const pre = el("pre");
      const code = el("code");
      if (m[2]) code.dataset.lang = m[2];
      code.textContent = body.join("\n");
      pre.append(code);
      out.append(pre);
      continue;
    }
    if (!line.trim()) {
      flush();
      i += 1;
      continue;
    }
    if ((m = line.match(RE.heading))) {
      flush();
      const h = el(`h${Math.min(6, m[1].length + 2)}`);
      renderInline(m[2], h);
      out.append(h);
      i += 1;
      continue;
    }
    if (RE.rule.test(line) && !para.length) {
      out.append(el("hr"));
      i += 1;
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && RE.tableSep.test(lines[i + 1])) {
      flush();
      const rows = [];
      let j = i + 2;
      while (j < lines.length && lines[j].includes("|") && lines[j].trim()) rows.push(lines[j++]);
      out.append(table(line, rows));
      i = j;
      continue;
    }
    if (RE.ul.test(line) || RE.ol.test(line)) {
      flush();
      const ordered = !RE.ul.test(line);
      const list = el(ordered ? "ol" : "ul");
      if (ordered) list.start = Number(line.match(RE.ol)[1]);
      const pattern = ordered ? RE.ol : RE.ul;
      while (i < lines.length && pattern.test(lines[i])) {
        const li = el("li");
        const found = lines[i].match(pattern);
        renderInline(ordered ? found[2] : found[1], li);
        i += 1;
        // indented continuation lines belong to the item
        while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !RE.ul.test(lines[i]) && !RE.ol.test(lines[i])) {
          li.append(el("br"));
          renderInline(lines[i].trim(), li);
          i += 1;
        }
        list.append(li);
      }
      out.append(list);
      continue;
    }
    if (RE.quote.test(line)) {
      flush();
      const quoted = [];
      while (i < lines.length && RE.quote.test(lines[i])) quoted.push(lines[i++].match(RE.quote)[1]);
      const q = el("blockquote");
      q.append(renderMarkdown(quoted.join("\n")));
      out.append(q);
      continue;
    }
    para.push(line);
    i += 1;
  }
  flush();
  return out;
}
