// manualrag web page: plain JS, no build step, no network beyond this server.
// Every piece of text from the manuals (snippets, captions, labels, headings, file names) goes into the
// page with textContent / attributes, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { query: "", image: null, hits: [], viewer: null, lastFocus: null, searches: 0 };

// ------------------------------------------------------------------------------------------ API access
function token() {
  try { return sessionStorage.getItem("manualrag-token") || ""; } catch (e) { return ""; }
}

async function api(url, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token()) headers.set("Authorization", "Bearer " + token());
  const resp = await fetch(url, { ...options, headers });
  if (resp.status === 401) {
    $("token-form").hidden = false;
    $("token").focus();
    throw new Error("this server needs a token");
  }
  return resp;
}

async function apiJson(url, options) {
  const resp = await api(url, options);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) throw new Error((body && body.error) || `HTTP ${resp.status}`);
  return body;
}

// an <img> from the API: a plain src, or (with a token, which an <img> cannot send) a blob URL
function loadImage(img, url) {
  if (!url) return;
  if (!token()) { img.src = url; return; }
  api(url).then((r) => (r.ok ? r.blob() : null)).then((b) => {
    if (b) img.src = URL.createObjectURL(b);
  }).catch(() => {});
}

// ------------------------------------------------------------------------------------------ DOM helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

// the snippet marks query terms as **term**: text in between stays text, marked parts go in <mark>
function marked(snippet) {
  const p = el("p", { class: "snippet" });
  String(snippet || "").split("**").forEach((part, i) => {
    if (!part) return;
    p.append(i % 2 ? el("mark", { text: part }) : document.createTextNode(part));
  });
  return p;
}

function setStatus(text, isError = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

function pagesLabel(h) {
  return h.pages && h.pages.length > 1 ? `pp. ${h.pages.join(", ")}` : `p. ${h.page}`;
}

// ------------------------------------------------------------------------------------------ search
function params() {
  return {
    q: $("q").value.trim(),
    modality: $("modality").value,
    source: $("source").value.trim(),
    k: $("k").value || "10",
  };
}

// a context block belongs to the query it was built for: gone once that query is no longer the one shown
function clearContext() {
  $("context-panel").hidden = true;
  $("context-text").value = "";
  $("context-note").textContent = "";
}

// an empty search: no query, so no results and no context (a reload of the URL does not bring them back)
function clearResults() {
  state.searches++;  // a search still under way does not bring its results back
  state.query = "";
  state.hits = [];
  $("results").replaceChildren();
  $("copy-context").disabled = true;
  clearContext();
  history.replaceState(null, "", location.pathname);
}

async function search() {
  const p = params();
  if (!p.q && !state.image) {
    clearResults();
    setStatus("Type what you are looking for, or choose an image.");
    return;
  }
  state.query = p.q;
  const mine = ++state.searches;
  clearContext();
  const qs = new URLSearchParams({ q: p.q, modality: p.modality, k: p.k });
  if (p.source) qs.set("source", p.source);
  history.replaceState(null, "", "?" + qs.toString());
  setStatus("Searching…");
  $("search-btn").disabled = true;
  try {
    let res;
    if (state.image) {
      const form = new FormData();
      form.append("image", state.image);
      for (const [k, v] of qs) form.append(k, v);
      res = await apiJson("/api/search", { method: "POST", body: form });
    } else {
      res = await apiJson("/api/search?" + qs.toString());
    }
    if (mine === state.searches) render(res);
  } catch (e) {
    if (mine === state.searches) setStatus(String(e.message || e), true);
  } finally {
    $("search-btn").disabled = false;
  }
}

function render(res) {
  state.hits = res.hits;
  const main = $("results");
  main.replaceChildren();
  $("copy-context").disabled = !state.query;
  const t = res.timings_ms && res.timings_ms.total;
  let msg = `${res.hits.length} hit${res.hits.length === 1 ? "" : "s"}` + (t ? ` in ${Math.round(t)} ms` : "");
  if (res.notes && res.notes.length) msg += " — " + res.notes.join("; ");
  if (!res.hits.length) msg = "No hits. Try other words, or fewer filters." + (res.notes.length ? " " + res.notes.join("; ") : "");
  setStatus(msg);
  res.hits.forEach((h) => main.append(h.kind === "image" ? imageCard(h) : textCard(h)));
}

function whereButton(h) {
  const label = `${h.path} · ${pagesLabel(h)}`;
  return el("button", {
    class: "where", type: "button", title: "Show on the page",
    onclick: () => openViewer(h.id, h.page),
  }, el("span", { class: "file", text: h.path }), el("span", { class: "page", text: " · " + pagesLabel(h) }),
  el("span", { class: "sr-only", text: " — open " + label }));
}

function imageCard(h) {
  const img = el("img", { alt: "Figure: " + (h.caption || h.path), loading: "eager", decoding: "async" });
  loadImage(img, h.urls.figure);
  const thumb = el("button", {
    class: "thumb", type: "button", title: "Enlarge",
    onclick: () => openLightbox(h.urls.figure, h.caption || h.path),
  }, img);
  const card = el("article", { class: "card image", "data-kind": "image", "data-id": h.id },
    el("div", { class: "meta" },
      el("span", { class: "badge", text: "figure" + (h.figure_kind ? " · " + h.figure_kind : "") }),
      h.quality && h.quality !== "ok" ? el("span", { class: "badge warn", text: h.quality }) : null),
    thumb,
    el("h3", { class: "caption", text: h.caption || "(no caption)" }),
    h.heading ? el("p", { class: "heading", text: h.heading }) : null,
    h.labels && h.labels.length ? el("p", { class: "labels", text: h.labels.slice(0, 60).join("  ") + (h.labels.length > 60 ? " …" : "") }) : null,
    h.ocr_text ? el("details", {}, el("summary", { text: "Text in the image (OCR)" }), el("p", { class: "ocr", text: h.ocr_text })) : null,
    whereButton(h), copiesNote(h));
  return card;
}

// a manual held twice in the library: its hit is shown once, the other files named
function copiesNote(h) {
  return h.copies && h.copies.length
    ? el("p", { class: "copies", text: "also in (same file): " + h.copies.join(", ") }) : null;
}

function textCard(h) {
  const figs = (h.figures || []).filter((f) => f.url).slice(0, 4);
  const card = el("article", { class: "card text", "data-kind": "text", "data-id": h.id },
    el("div", { class: "meta" }, el("span", { class: "badge", text: "text" }),
      h.suspect ? el("span", { class: "badge warn", text: "not visible on the page: " + h.suspect }) : null),
    h.heading ? el("p", { class: "heading", text: h.heading }) : null,
    marked(h.snippet),
    figs.length ? el("div", { class: "linked" }, ...figs.map((f) => {
      const img = el("img", { alt: "Figure: " + (f.caption || "figure on p. " + f.page), loading: "lazy" });
      loadImage(img, f.url);
      return el("button", {
        class: "mini", type: "button", title: (f.caption || "figure") + " (p. " + f.page + ")",
        onclick: () => openViewer(f.figure_id, f.page),
      }, img);
    })) : null,
    whereButton(h), copiesNote(h));
  return card;
}

// ------------------------------------------------------------------------------------------ viewer
function showOverlay(node) {
  state.lastFocus = document.activeElement;
  node.hidden = false;
  document.body.classList.add("modal-open");
  const btn = node.querySelector(".viewer-bar button:last-child");
  if (btn) btn.focus();
}

function hideOverlay(node) {
  if (node.hidden) return false;
  node.hidden = true;
  if ($("viewer").hidden && $("lightbox").hidden) document.body.classList.remove("modal-open");
  if (state.lastFocus && state.lastFocus.focus) state.lastFocus.focus();
  return true;
}

function openLightbox(url, title) {
  const img = $("lightbox-img");
  img.removeAttribute("src");
  img.alt = "Figure: " + title;
  $("lightbox-title").textContent = title;
  loadImage(img, url);
  showOverlay($("lightbox"));
}

async function openViewer(hitId, page) {
  try {
    const box = await apiJson("/api/hits/" + encodeURIComponent(hitId));
    state.viewer = { box, page: box.page || page || 1 };
    showOverlay($("viewer"));
    showPage();
  } catch (e) {
    setStatus(String(e.message || e), true);
  }
}

function viewerDpi(box) {
  const width = Math.min(window.innerWidth, 1100) * (window.devicePixelRatio || 1);
  const dpi = Math.round((width / Math.max(box.page_width || 612, 1)) * 72);
  return Math.max(50, Math.min(220, dpi));
}

function showPage() {
  const v = state.viewer;
  if (!v) return;
  const { box, page } = v;
  $("viewer-title").textContent = `${box.path} · page ${page} of ${box.n_pages}`;
  $("prev-page").disabled = page <= 1;
  $("next-page").disabled = page >= box.n_pages;
  const img = $("page-img");
  const hb = $("hit-box");
  const text = $("viewer-text");
  clearExtraBoxes();
  if (box.file_type === "text") {
    img.hidden = true;
    hb.hidden = true;
    text.hidden = false;
    const h = state.hits.find((x) => x.id === box.id);
    text.textContent = h ? h.text : "(a text file: no page image)";
    return;
  }
  text.hidden = true;
  img.hidden = false;
  img.removeAttribute("src");
  img.alt = `Page ${page} of ${box.path}`;
  const dpi = box.file_type === "pdf" ? `?dpi=${viewerDpi(box)}` : "";
  loadImage(img, `/api/pages/${encodeURIComponent(box.doc_id)}/${page}.png${dpi}`);
  const onPage = (box.pages || [box.page]).includes(page) && box.page_width > 0 && box.page_height > 0;
  // a text hit's own lines, one box per run (its stored bbox may enclose a figure between its blocks)
  const rects = onPage ? (box.boxes && box.boxes.length ? box.boxes : [box.bbox]) : [];
  hb.hidden = !onPage;
  hb.parentNode.classList.toggle("multi", rects.length > 1);
  const pct = (a, b) => `${Math.max(0, Math.min(100, (a / b) * 100)).toFixed(3)}%`;
  rects.forEach((r, i) => {
    let el = hb;
    if (i > 0) {
      el = document.createElement("div");
      el.className = "hit-box hit-box-extra";
      hb.parentNode.appendChild(el);
    }
    const [x0, y0, x1, y1] = r;
    el.style.left = pct(x0, box.page_width);
    el.style.top = pct(y0, box.page_height);
    el.style.width = pct(x1 - x0, box.page_width);
    el.style.height = pct(y1 - y0, box.page_height);
  });
  if (onPage) {
    img.addEventListener("load", () => hb.scrollIntoView({ block: "center", inline: "center" }), { once: true });
  }
}

function clearExtraBoxes() {
  for (const el of document.querySelectorAll(".hit-box-extra")) el.remove();
}

function turnPage(delta) {
  const v = state.viewer;
  if (!v) return;
  const next = v.page + delta;
  if (next < 1 || next > v.box.n_pages) return;
  v.page = next;
  showPage();
}

// ------------------------------------------------------------------------------------------ context
async function copyContext() {
  const query = state.query;
  if (!query) return;
  const btn = $("copy-context");
  btn.disabled = true;
  try {
    const res = await apiJson("/api/context?" + new URLSearchParams({ q: query }).toString());
    if (state.query !== query) return;  // another search (or an empty one) came first: this block is stale
    const area = $("context-text");
    area.value = res.context;
    $("context-panel").hidden = false;
    let copied = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(res.context);
        copied = true;
      }
    } catch (e) { copied = false; }
    $("context-note").textContent = copied
      ? `copied to the clipboard (${res.sources.length} sources, ${res.context.length} characters)`
      : "select the text below and copy it";
    if (!copied) { area.focus(); area.select(); }
  } catch (e) {
    setStatus(String(e.message || e), true);
  } finally {
    btn.disabled = !state.query;
  }
}

// ------------------------------------------------------------------------------------------ wiring
function init() {
  $("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
  $("image").addEventListener("change", () => {
    const f = $("image").files[0];
    state.image = f || null;
    $("image-chip").hidden = !f;
    $("image-name").textContent = f ? f.name : "";
    if (f) search();
  });
  $("image-clear").addEventListener("click", () => {
    state.image = null;
    $("image").value = "";
    $("image-chip").hidden = true;
  });
  $("copy-context").addEventListener("click", copyContext);
  $("context-close").addEventListener("click", () => { $("context-panel").hidden = true; });
  $("viewer-close").addEventListener("click", () => hideOverlay($("viewer")));
  $("lightbox-close").addEventListener("click", () => hideOverlay($("lightbox")));
  $("prev-page").addEventListener("click", () => turnPage(-1));
  $("next-page").addEventListener("click", () => turnPage(1));
  for (const id of ["viewer", "lightbox"]) {
    $(id).addEventListener("click", (ev) => { if (ev.target.classList.contains("viewer-body")) hideOverlay($(id)); });
  }
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    try { sessionStorage.setItem("manualrag-token", $("token").value.trim()); } catch (e) { /* private mode */ }
    $("token-form").hidden = true;
    search();
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") {
      if (hideOverlay($("lightbox")) || hideOverlay($("viewer"))) ev.preventDefault();
      return;
    }
    if (!$("viewer").hidden && (ev.key === "ArrowLeft" || ev.key === "ArrowRight")) {
      turnPage(ev.key === "ArrowLeft" ? -1 : 1);
      ev.preventDefault();
    } else if (ev.key === "/" && document.activeElement !== $("q") && $("viewer").hidden) {
      ev.preventDefault();
      $("q").focus();
    }
  });
  // search by image needs the index's CLIP vectors: without them the button would only lead to an error
  apiJson("/api/health").then((h) => {
    if (h && h.models && !h.models.clip) $("upload").hidden = true;
  }).catch(() => { /* a token is asked for; the search says the rest */ });
  const url = new URLSearchParams(location.search);
  if (url.get("modality")) $("modality").value = url.get("modality");
  if (url.get("source")) $("source").value = url.get("source");
  if (url.get("k")) $("k").value = url.get("k");
  if (url.get("q")) { $("q").value = url.get("q"); search(); }
}

document.addEventListener("DOMContentLoaded", init);
