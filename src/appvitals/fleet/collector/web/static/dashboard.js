// appvitals dashboard: renders GET /v1/report and GET /v1/sessions/{id}. No build step, no CDN.
"use strict";

const PALETTE = ["#2f6fde", "#d64545", "#2a9d6f", "#e8a33d", "#8e5bd6", "#1fa3b8", "#c2558f", "#6b7380", "#8a6d3b"];
const params = new URLSearchParams(location.search);
const TOKEN = params.get("token");
let REPORT = null;
let PATH = [];  // the drill path: ["app_version=6.04", "stage=indexing"], kept in the hash (#/where/...)
let plots = [];

const pathFromHash = () => {
  const m = location.hash.match(/^#\/where\/(.*)$/);
  return m ? m[1].split("&").filter(Boolean).map(decodeURIComponent) : [];
};
const hashOfPath = (p) => (p.length ? "#/where/" + p.map(encodeURIComponent).join("&") : "#/");

function drillInto(attrs) {
  // walk one step further: the path's items, then the group's items on other attrs
  const keys = new Set(PATH.map((w) => w.split("=")[0]));
  const more = Object.entries(attrs).filter(([k]) => !keys.has(k)).map(([k, v]) => k + "=" + v);
  location.hash = hashOfPath([...PATH, ...more]);
}

function api(path) {
  const headers = TOKEN ? { Authorization: "Bearer " + TOKEN } : {};
  return fetch(path, { headers }).then(async (r) => {
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || r.status + " " + r.statusText);
    return body;
  });
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(x < 0.1 && x > 0 ? 1 : 0) + "%");
const num = (x) => Number(x).toLocaleString("en-US");
const fmtValue = (v) => (v.startsWith(">=") || v.startsWith("<") ? v : "= " + v);
const chips = (attrs) => Object.entries(attrs).map(([k, v]) => el("span", { class: "chip" }, k + " ", el("b", {}, fmtValue(v))));
const bar = (share) => el("span", {}, el("span", { class: "bar" }, el("span", { style: `width:${Math.round(100 * (share || 0))}%` })),
  el("span", { class: "pct" }, pct(share)));
const sameAttrs = (a, b) => JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());
const timeText = (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z";

function destroyPlots() { plots.forEach((p) => p.destroy()); plots = []; }

// ---------- report view ----------

function loadReport() {
  const form = document.getElementById("controls");
  const q = new URLSearchParams();
  for (const name of ["since", "metric", "threshold"]) q.set(name, form.elements[name].value);
  for (const name of ["until", "min_support", "min_risk_ratio", "max_order", "fdr", "compare"]) if (params.get(name)) q.set(name, params.get(name));
  for (const w of PATH) q.append("where", w);
  document.body.dataset.state = "loading";
  return api("/v1/report?" + q.toString()).then((r) => {
    REPORT = r;
    renderReport(r);
    document.body.dataset.state = "ready";
  }).catch((err) => {
    document.getElementById("headline").replaceChildren(el("p", { class: "error" }, "Could not load the report: " + err.message));
    document.body.dataset.state = "error";
  });
}

function renderReport(r) {
  destroyPlots();
  renderBreadcrumb(r);
  renderHeadline(r);
  renderExplanations(r);
  renderTree(r);
  renderTimeline(r);
  renderHeatmap(r);
  renderCompare(r);
  renderWorst(r);
  if (r.explanations.length) showDrill(r.explanations[0]);
  else document.getElementById("drill").replaceChildren(el("p", { class: "muted" }, "Nothing to drill into."));
}

function renderBreadcrumb(r) {
  const nav = document.getElementById("breadcrumb");
  const steps = r.path || [];
  nav.hidden = steps.length < 2;
  nav.replaceChildren(...steps.flatMap((s, i) => {
    const text = `${s.label} (${pct(s.high_share)} of ${num(s.sessions)} high, ${num(s.high_clients)} of ${num(s.clients)} clients)`;
    const item = i === steps.length - 1
      ? el("b", { "data-testid": "crumb" }, text)
      : el("a", { href: hashOfPath(PATH.slice(0, i)), "data-testid": "crumb" }, text);
    return i ? [el("span", { class: "sep" }, " › "), item] : [item];
  }));
}

function renderHeadline(r) {
  const h = document.getElementById("headline");
  const since = document.getElementById("controls").elements.since.value;
  const top = r.explanations[0];
  h.replaceChildren(
    el("p", {}, el("span", { class: "big", "data-testid": "high-share" }, pct(r.high_share)),
      ` of ${num(r.sessions)} sessions${PATH.length ? " with " + r.tree.label : ""} in the last ${since} had ${r.metric} over ${r.threshold}% in some stage (${num(r.high_sessions)} sessions, on ${num(r.high_clients)} of ${num(r.clients)} clients).`),
    top ? el("p", {}, "Most likely cause: ", chips(top.attrs),
      ` — ${pct(top.high_share)} of its ${num(top.sessions)} sessions were high, ${top.risk_ratio.toFixed(1)}× more often than the rest.`)
      : el("p", { class: "muted" }, "No attribute combination stands out."),
    ...(r.notes || []).map((n) => el("p", { class: "muted", "data-testid": "note" }, "Note: " + n + ".")),
    el("p", { class: "muted" }, `${timeText(r.window.since_ms)} – ${timeText(r.window.until_ms)} · ${r.candidates} combinations tested · ${r.took_ms} ms`),
  );
}

function renderExplanations(r) {
  const body = document.querySelector("#explanations tbody");
  body.replaceChildren();
  document.getElementById("no-explanations").hidden = r.explanations.length > 0;
  r.explanations.forEach((e, i) => {
    const tr = el("tr", { "data-testid": "explanation", onclick: () => showDrill(e) },
      el("td", {}, i + 1), el("td", {}, chips(e.attrs)), el("td", { class: "num" }, num(e.sessions)),
      el("td", {}, bar(e.high_share)), el("td", { class: "num" }, e.risk_ratio.toFixed(1) + "×"));
    tr._attrs = e.attrs;
    body.append(tr);
  });
}

function renderTree(r) {
  const box = document.getElementById("tree");
  box.className = "tree";
  const build = (node, depth) => {
    const label = depth === 0
      ? `${pct(node.high_share)} of ${num(node.sessions)} sessions had ${r.metric} over ${r.threshold}%`
      : `${pct(node.share_of_parent)} of those: ${node.label} — ${pct(node.high_share)} high`;
    const span = el("span", { class: "node", "data-testid": "tree-node", onclick: (ev) => { ev.stopPropagation(); if (depth) showDrill(node); } }, label);
    span._attrs = node.attrs;
    const li = el("li", {}, span);
    if (node.children && node.children.length) li.append(el("ul", {}, node.children.map((c) => build(c, depth + 1))));
    return li;
  };
  box.replaceChildren(el("ul", {}, build(r.tree, 0)));
}

function findPath(node, attrs, path = []) {
  const here = [...path, node];
  if (path.length && sameAttrs(node.attrs, attrs)) return here;
  for (const c of node.children || []) {
    const p = findPath(c, attrs, here);
    if (p) return p;
  }
  return null;
}

function showDrill(item) {
  const r = REPORT;
  const expl = r.explanations.find((e) => sameAttrs(e.attrs, item.attrs)) || item;
  document.querySelectorAll("#explanations tbody tr, .tree .node").forEach((n) => n.classList.toggle("selected", !!n._attrs && sameAttrs(n._attrs, item.attrs)));
  const path = findPath(r.tree, item.attrs) || [r.tree];
  const node = path[path.length - 1];
  const crumbs = el("p", { class: "muted" }, path.map((n, i) => (i === 0 ? "all sessions" : n.label)).join(" → "));
  const sentence = el("p", { class: "sentence", "data-testid": "drill-sentence" },
    `Of ${num(expl.sessions)} sessions with `, chips(expl.attrs), `, ${num(expl.high_sessions)} (${pct(expl.high_share)}) had ${r.metric} over ${r.threshold}%`,
    ` on ${num(expl.high_clients || 0)} of ${num(expl.clients || 0)} clients`,
    expl.risk_ratio ? ` — ${expl.risk_ratio.toFixed(1)}× more often than the rest.` : ".");
  const drill = el("button", { type: "button", "data-testid": "drill-in", onclick: () => drillInto(expl.attrs) },
    "Drill into these sessions →");
  const parts = [crumbs, sentence, drill];
  if (expl.coverage !== undefined) parts.push(el("p", {}, `They hold ${pct(expl.coverage)} of all high sessions (p = ${expl.p_value}).`));
  if (expl.same_as && expl.same_as.length) parts.push(el("p", { class: "muted" }, "Same sessions as: ", expl.same_as.map((a) => el("span", {}, chips(a), " "))));
  if (node && node !== r.tree && node.children && node.children.length) {
    parts.push(el("p", {}, "Of those:"), el("ul", {}, node.children.map((c) =>
      el("li", {}, el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); showDrill(c); } }, c.label), ` — ${pct(c.share_of_parent)} of the high ones, ${pct(c.high_share)} high`))));
  }
  const examples = expl.examples || [];
  if (examples.length) {
    parts.push(el("p", {}, "Sessions to open:"), el("ul", {}, examples.map((sid) =>
      el("li", {}, el("a", { href: "#/session/" + encodeURIComponent(sid), "data-testid": "example-session" }, sid)))));
  }
  document.getElementById("drill").replaceChildren(...parts);
}

function renderTimeline(r) {
  const box = document.getElementById("timeline");
  box.replaceChildren();
  document.getElementById("timeline-key").textContent = r.timeline.key || "version";
  const t = r.timeline;
  if (!t.series.length) { box.append(el("p", { class: "muted" }, "No samples in this window.")); return; }
  const xs = t.times.map((ms) => ms / 1000);
  const data = [xs, ...t.series.map((s) => s.high_share.map((v) => (v === null ? null : 100 * v)))];
  const series = [{}, ...t.series.map((s, i) => ({
    label: s.name, stroke: PALETTE[i % PALETTE.length], width: 2, points: { show: xs.length < 40 },
    value: (u, v) => (v === null ? "–" : v.toFixed(0) + "%"),
  }))];
  const plot = new uPlot({
    width: Math.max(300, box.clientWidth - 4), height: 240, series,
    scales: { y: { range: [0, 100] } },
    axes: [{}, { label: "% high", values: (u, v) => v.map((x) => x + "%") }],
  }, data, box);
  plots.push(plot);
  box.dataset.points = String(t.series.reduce((n, s) => n + s.high_share.filter((v) => v !== null).length, 0));
}

function heat(share) {
  if (share === null || share === undefined) return "background:#fafafa;color:#bbb";
  const a = Math.min(1, 0.08 + share * 0.92);
  return `background:rgba(214,69,69,${a.toFixed(2)});color:${share > 0.5 ? "#fff" : "#1d2430"}`;
}

function renderHeatmap(r) {
  const h = r.heatmap;
  const box = document.getElementById("heatmap");
  document.getElementById("heatmap-title").textContent = `${h.row_key || "version"} × ${h.col_key || "stage"}: share high`;
  if (!h.rows.length || !h.cols.length) { box.replaceChildren(el("p", { class: "muted" }, "Needs a version session attr and a stage sample attr.")); return; }
  const table = el("table", { "data-testid": "heatmap" },
    el("thead", {}, el("tr", {}, el("th", {}, ""), h.cols.map((c) => el("th", {}, c)))),
    el("tbody", {}, h.rows.map((row, i) => el("tr", {}, el("th", {}, row), h.cols.map((c, j) =>
      el("td", { style: heat(h.high_share[i][j]), title: `${num(h.sessions[i][j])} sessions`, "data-testid": "heat-cell" }, pct(h.high_share[i][j])))))));
  box.replaceChildren(table);
}

function renderCompare(r) {
  const c = r.compare;
  const box = document.getElementById("compare");
  if (!c.a) { box.replaceChildren(el("p", { class: "muted" }, "No versions to compare.")); return; }
  const sides = [c.a, c.b].filter(Boolean);
  const stages = [...new Set(sides.flatMap((s) => Object.keys(s.by_stage)))].sort();
  const table = el("table", { "data-testid": "compare" },
    el("thead", {}, el("tr", {}, el("th", {}, c.key || "version"), sides.map((s) => el("th", { class: "num" }, s.version)))),
    el("tbody", {},
      el("tr", {}, el("td", {}, "sessions"), sides.map((s) => el("td", { class: "num" }, num(s.sessions)))),
      el("tr", {}, el("td", {}, "high"), sides.map((s) => el("td", { class: "num" }, pct(s.high_share)))),
      el("tr", {}, el("td", {}, `mean ${r.metric}`), sides.map((s) => el("td", { class: "num" }, s.mean === null ? "–" : s.mean.toFixed(1)))),
      stages.map((st) => el("tr", {}, el("td", {}, `high while ${st}`), sides.map((s) => {
        const cell = s.by_stage[st];
        return el("td", { class: "num", style: cell ? heat(cell.high_share) : "" }, cell ? pct(cell.high_share) : "–");
      })))));
  box.replaceChildren(table);
}

function renderWorst(r) {
  const body = document.querySelector("#worst tbody");
  body.replaceChildren(...r.worst_sessions.map((s) => el("tr", {},
    el("td", {}, el("a", { href: "#/session/" + encodeURIComponent(s.session_id), "data-testid": "worst-session" }, s.session_id.slice(0, 16))),
    el("td", {}, chips(s.attrs)), el("td", { class: "num" }, s.mean.toFixed(1)), el("td", { class: "num" }, s.max.toFixed(1)),
    el("td", {}, s.high_phases.slice(0, 4).join("; ") + (s.high_phases.length > 4 ? "; …" : "")))));
}

// ---------- session view ----------

function eventsPlugin(events, threshold) {
  return {
    hooks: {
      draw: [(u) => {
        const ctx = u.ctx;
        ctx.save();
        const { left, top, width, height } = u.bbox;
        const y = u.valToPos(threshold, "y", true);
        ctx.strokeStyle = "#d64545"; ctx.lineWidth = 1.5; ctx.setLineDash([]);
        ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + width, y); ctx.stroke();
        ctx.setLineDash([4, 4]); ctx.strokeStyle = "#6b7380"; ctx.fillStyle = "#1d2430";
        ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
        ctx.textAlign = "left"; ctx.textBaseline = "alphabetic";  // uPlot leaves its axes' alignment set
        // labels go in the first of a few rows where they do not overlap the label before them;
        // a label with no room is left out (its line stays, and the table below lists every event)
        const rowEnds = [-Infinity, -Infinity, -Infinity, -Infinity];
        const gap = 6 * devicePixelRatio;
        let hidden = 0;
        events.slice().sort((a, b) => a.ts - b.ts).forEach((e) => {
          const x = u.valToPos(e.ts / 1000, "x", true);
          if (x < left || x > left + width) return;
          ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
          const w = ctx.measureText(e.name).width;
          const start = Math.min(x + 3, left + width - w);  // right of the line, inside the plot
          const row = rowEnds.findIndex((end) => start > end + gap);
          if (row < 0) { hidden += 1; return; }
          ctx.fillText(e.name, start, top + 12 * devicePixelRatio * (1 + row));
          rowEnds[row] = start + w;
        });
        u.root.dataset.hiddenLabels = String(hidden);
        ctx.restore();
      }],
    },
  };
}

function loadSession(sid) {
  document.body.dataset.state = "loading";
  destroyPlots();
  document.getElementById("session-id").textContent = sid;
  return api("/v1/sessions/" + encodeURIComponent(sid)).then((s) => {
    document.getElementById("session-attrs").replaceChildren(...chips(s.attrs),
      el("span", { class: "chip" }, "client ", el("b", {}, s.client_id || "?")),
      el("span", { class: "chip" }, "samples ", el("b", {}, s.samples.length)));
    const box = document.getElementById("session-chart");
    box.replaceChildren();
    const threshold = Number(document.getElementById("controls").elements.threshold.value) || 30;
    const xs = s.samples.map((p) => p.ts / 1000);
    const stage = s.samples.map((p) => p.attrs.stage || "");
    const plot = new uPlot({
      width: Math.max(300, box.clientWidth - 4), height: 300,
      series: [{}, { label: "cpu %", stroke: "#2f6fde", width: 1.5, fill: "rgba(47,111,222,0.08)",
        value: (u, v, si, i) => (v === null ? "–" : v.toFixed(1) + "%" + (i !== null && stage[i] ? " (" + stage[i] + ")" : "")) }],
      scales: { y: { range: (u, min, max) => [0, Math.max(max || 0, threshold * 1.25) * 1.05] } },
      axes: [{}, { label: "cpu %" }],
      plugins: [eventsPlugin(s.events, threshold)],
    }, [xs, s.samples.map((p) => p.cpu)], box);
    plots.push(plot);
    box.dataset.points = String(xs.length);
    box.dataset.events = String(s.events.length);
    document.querySelector("#session-events tbody").replaceChildren(...s.events.map((e) =>
      el("tr", {}, el("td", {}, timeText(e.ts)), el("td", {}, e.name), el("td", {}, chips(e.attrs)))));
    document.body.dataset.state = "ready";
  }).catch((err) => {
    document.getElementById("session-attrs").replaceChildren(el("p", { class: "error" }, "Could not load the session: " + err.message));
    document.body.dataset.state = "error";
  });
}

function route() {
  const m = location.hash.match(/^#\/session\/(.+)$/);
  document.getElementById("report-view").hidden = !!m;
  document.getElementById("session-view").hidden = !m;
  if (m) {
    document.getElementById("back-to-report").href = hashOfPath(PATH);
    return loadSession(decodeURIComponent(m[1]));
  }
  const path = pathFromHash();
  const samePath = JSON.stringify(path) === JSON.stringify(PATH);
  PATH = path;
  if (REPORT && samePath) { document.body.dataset.state = "ready"; renderReport(REPORT); return null; }
  return loadReport();
}

document.getElementById("controls").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (location.hash.startsWith("#/session/")) location.hash = hashOfPath(PATH);
  loadReport();
});
for (const name of ["since", "metric", "threshold"]) {
  const value = params.get(name);
  if (!value) continue;
  const field = document.getElementById("controls").elements[name];
  if (field.tagName === "SELECT" && ![...field.options].some((o) => o.value === value)) field.append(el("option", { value }, value));
  field.value = value;
}
window.addEventListener("hashchange", route);
route();
