// Renders /openapi.json as a plain list of routes and parameters (no CDN, text only).
"use strict";
function el(tag, text, cls) { const n = document.createElement(tag); if (text) n.textContent = text; if (cls) n.className = cls; return n; }
async function main() {
  const spec = await (await fetch("/openapi.json")).json();
  document.getElementById("intro").append(el("p", spec.info.description || ""));
  const ops = document.getElementById("ops");
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const box = el("section", "", "op");
      const h = el("h2");
      h.append(el("span", method.toUpperCase(), "method"), document.createTextNode(path));
      box.append(h, el("p", op.summary || ""));
      const params = op.parameters || [];
      const form = op.requestBody && op.requestBody.content && op.requestBody.content["multipart/form-data"];
      if (params.length || form) {
        const t = el("table");
        const head = el("tr");
        ["parameter", "in", "description"].forEach((x) => head.append(el("th", x)));
        t.append(head);
        for (const p of params) {
          const tr = el("tr");
          tr.append(el("td", p.name + (p.required ? " *" : "")), el("td", p.in), el("td", p.description || (p.schema && p.schema.description) || ""));
          t.append(tr);
        }
        if (form) {
          const tr = el("tr");
          tr.append(el("td", "multipart form"), el("td", "body"), el("td", "fields: image (file) *, q, k, modality, source, channels"));
          t.append(tr);
        }
        box.append(t);
      }
      ops.append(box);
    }
  }
}
main().catch((e) => { document.getElementById("ops").textContent = "cannot load /openapi.json: " + e; });
