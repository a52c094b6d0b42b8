"use strict";
// One run: curves (mean with the per-rank min..max band, alert markers), per-rank heatmaps and memory,
// the alert list. Polls the run every 3 s while it is running and redraws when it moved on.

const runId = new URLSearchParams(location.search).get("run");
const CURVES = [
  ["loss", "loss (mean, min–max over ranks)", ["loss"]],
  ["lr", "learning rate", ["lr"]],
  ["grad_norm", "grad norm (total, adapter, backbone)", ["grad_norm", "grad_norm_adapter", "grad_norm_backbone"]],
];
const HEATMAPS = [
  ["step_time_s", "step time per rank (s)"],
  ["data_time_s", "data wait per rank (s)"],
  ["compute_time_s", "compute time per rank (s)"],
];
const MEMORY = ["mem_peak_mb", "mem_alloc_mb"];
let span = [null, null];  // the zoomed step range of the curves (null: the whole run)
let lastSeen = null;
let lastDrawn = false;

function points() {
  return Math.max(200, Math.min(2000, Math.round(window.innerWidth)));
}

function renderMeta(info) {
  document.title = "rankstream · " + (info.run_name || info.run_id);
  document.getElementById("title").textContent = info.run_name || info.run_id;
  const meta = document.getElementById("meta");
  meta.replaceChildren(
    el("span", {}, "run ", el("b", { text: info.run_id })),
    el("span", {}, "team ", el("b", { text: info.team })),
    el("span", {}, "project ", el("b", { text: info.project })),
    el("span", {}, el("span", { class: "status status-" + info.status, text: info.status })),
    el("span", {}, "ranks ", el("b", { text: String(info.world_size) })),
    el("span", {}, "last step ", el("b", { text: info.last_step == null ? "–" : String(info.last_step) })),
    el("span", { class: info.firing ? "firing" : "" }, `firing alerts ${info.firing}`),
    el("span", {}, "started ", el("b", { text: fmtTime(info.started_at) })),
  );
}

function renderAlerts(alerts) {
  const body = document.querySelector("#alerts tbody");
  body.replaceChildren();
  for (const a of alerts) {
    const state = a.state === "resolved" ? `resolved at step ${a.resolved_step}` : "firing";
    body.append(
      el("tr", { "data-alert": a.alert_id, "data-step": String(a.step) },
        el("td", { class: "num", text: String(a.step) }),
        el("td", { class: a.state === "resolved" ? "resolved" : "firing", text: state }),
        el("td", { text: a.severity }),
        el("td", { text: a.rule }),
        el("td", { text: a.ranks.join(", ") }),
        el("td", { text: a.message }),
        el("td", {}, el("details", {}, el("summary", { text: "evidence" }), el("pre", { text: JSON.stringify(a.evidence, null, 2) }))),
      ),
    );
  }
}

function zoomHook(u) {
  const min = u.scales.x.min, max = u.scales.x.max;
  const data = u.data[0];
  const full = data.length && min <= data[0] && max >= data[data.length - 1];
  const next = full ? [null, null] : [Math.floor(min), Math.ceil(max)];
  if (next[0] === span[0] && next[1] === span[1]) return;
  span = next;
  clearTimeout(zoomHook.timer);
  zoomHook.timer = setTimeout(() => drawRanks().catch(showError), 250);
}

async function drawCurves(info, alerts) {
  const grid = document.getElementById("curves");
  grid.replaceChildren();
  const charts = CURVES.map(([id, title, metrics]) => [id, title, metrics.filter((m) => info.metrics.includes(m))])
    .filter(([, , present]) => present.length);
  if (!charts.length) { grid.append(el("p", { class: "note", text: "no aligned steps yet" })); return; }
  // One request per chart, all at once: each chart draws as soon as its own data is there.
  const boxes = charts.map(([id, title]) => panel(grid, id, title));
  window.rankstream.data.series = {};
  await Promise.all(charts.map(async ([id, , present], i) => {
    const q = present.map((m) => "metric=" + encodeURIComponent(m)).join("&");
    const data = await getJSON(`/api/series?run=${encodeURIComponent(runId)}&${q}&points=${points()}`);
    window.rankstream.data.series[id] = data;
    drawCurve(boxes[i], id, present.filter((m) => data.metrics[m]), data, alerts);
  }));
}

function drawCurve(box, id, present, data, alerts) {
  if (!present.length) { box.append(el("p", { class: "note", text: "no data" })); return; }
  if (present.length === 1) {
    const s = data.metrics[present[0]];
    const color = PALETTE[0];
    lineChart(box, id, [
      { label: present[0] + " mean", color },
      { label: "min over ranks", color: color + "66", faint: true },
      { label: "max over ranks", color: color + "66", faint: true, band: [3, 2] },
    ], [s.step, s.mean, s.min, s.max], { alerts, nonfinite: s.nonfinite, hooks: { setScale: [(u, key) => key === "x" && zoomHook(u)] } });
    box.append(el("p", { class: "note", text: `${s.step.length} points, ${data.width} step(s) per bucket` }));
    return;
  }
  // Several metrics on one axis: align them on the union of their steps.
  const steps = [...new Set(present.flatMap((m) => data.metrics[m].step))].sort((a, b) => a - b);
  const columns = present.map((m) => {
    const at = new Map(data.metrics[m].step.map((st, i) => [st, data.metrics[m].mean[i]]));
    return steps.map((st) => (at.has(st) ? at.get(st) : null));
  });
  lineChart(box, id, present.map((m, i) => ({ label: m, color: PALETTE[i] })), [steps, ...columns], { alerts });
}

async function drawRanks() {
  const grid = document.getElementById("ranks");
  const from = span[0] == null ? "" : `&from=${span[0]}&to=${span[1]}`;
  const base = `/api/ranks?run=${encodeURIComponent(runId)}&points=${Math.min(400, points())}${from}`;
  const results = await Promise.all([...HEATMAPS.map(([m]) => m), ...MEMORY].map((m) => getJSON(`${base}&metric=${m}`)));
  grid.replaceChildren();
  let window_ = null;
  HEATMAPS.forEach(([metric, title], i) => {
    const data = results[i];
    if (!data.values.some((row) => row.some((v) => v != null))) return;
    window_ = data.window;
    heatmap(panel(grid, "heat-" + metric, title), "heat_" + metric, data, "s");
  });
  const memory = results.slice(HEATMAPS.length).find((d) => d.values.some((row) => row.some((v) => v != null)));
  if (memory) {
    const box = panel(grid, "memory", `memory per rank (${memory.metric}, MB, max per bucket)`);
    const series = memory.ranks.map((r, i) => ({ label: "rank " + r, color: PALETTE[i % PALETTE.length] }));
    lineChart(box, "memory", series, [memory.step, ...memory.values], {});
  }
  const note = document.getElementById("window");
  if (window_) {
    note.textContent = `steps ${window_.lo}–${window_.hi}, ${window_.width} step(s) per cell` +
      (window_.clipped ? " (the latest steps: zoom a curve to choose others)" : "");
  }
}

async function refresh() {
  const info = await getJSON("/api/run?run=" + encodeURIComponent(runId));
  const seen = `${info.last_step}|${info.status}|${info.firing}|${info.metrics.length}`;
  document.getElementById("live").textContent = info.status === "running" ? `live · step ${info.last_step ?? "–"}` : "";
  if (seen === lastSeen) return info;
  lastSeen = seen;
  renderMeta(info);
  const alerts = await getJSON("/api/alerts?run=" + encodeURIComponent(runId));
  window.rankstream.data.alerts = alerts;
  renderAlerts(alerts);
  if (span[0] == null || !lastDrawn) {  // zoomed in: keep the view (double-click to follow the run again)
    await drawCurves(info, alerts);
    await drawRanks();
    lastDrawn = true;
  }
  window.rankstream.data.info = info;
  return info;
}

async function main() {
  if (!runId) throw new Error("no run given: open /run?run=RUN_ID");
  try {
    await refresh();
  } finally {
    window.rankstream.ready = true;
    // Follow the run while it can still move on (running; lost runs may come back).
    setInterval(() => {
      const info = window.rankstream.data.info;
      if (!info || info.status === "running" || info.status === "lost") refresh().catch(showError);
    }, 3000);
  }
}

main().catch((err) => showError(err.message || err));
