// The /docs page: every operation of /openapi.json, readable (no inline script under the CSP).
const root = document.getElementById("paths");
const spec = await (await fetch("/openapi.json")).json();
root.textContent = "";
for (const [path, ops] of Object.entries(spec.paths).sort()) {
  for (const [method, op] of Object.entries(ops)) {
    const box = document.createElement("details");
    const head = document.createElement("summary");
    const m = document.createElement("span");
    m.className = `m ${method}`; m.textContent = method.toUpperCase();
    head.append(m, ` ${path}  `, op.summary || op.description || "");
    const body = document.createElement("pre");
    body.textContent = JSON.stringify(op, null, 2);
    box.append(head, body);
    root.append(box);
  }
}
