"use strict";
// Shared by the three pages: fetching the JSON, line charts (uPlot) with alert markers, heatmaps.
// window.rankstream exposes what was drawn (series, markers, heatmap cells) for the browser tests.

window.rankstream = { charts: {}, errors: [], ready: false, data: {} };

const FIRING = "#d62728";
const RESOLVED = "#ff7f0e";
const PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showError(message) {
  window.rankstream.errors.push(String(message));
  const box = document.getElementById("errors");
  if (box) box.textContent = window.rankstream.errors.join(" · ");
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function fmtTime(epoch) {
  if (epoch == null) return "";
  return new Date(epoch * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";
}

function fmtNum(value) {
  if (value == null) return "–";
  const abs = Math.abs(value);
  return abs !== 0 && (abs < 1e-3 || abs >= 1e5) ? value.toExponential(3) : value.toPrecision(4);
}

function fmtTick(value) {
  if (value == null) return "";
  const abs = Math.abs(value);
  return abs !== 0 && (abs < 1e-2 || abs >= 1e4) ? value.toExponential(1) : String(+value.toPrecision(4));
}

function panel(parent, id, title) {
  const box = el("section", { class: "panel", id: "panel-" + id }, el("h2", { text: title }));
  parent.append(box);
  return box;
}

function chartWidth(box) {
  return Math.max(320, box.clientWidth - 20);
}

// Alert markers: a vertical line at the alert's step (red while firing, orange once resolved,
// with a shaded span up to the step it resolved at), and red ticks at steps whose mean was NaN/inf.
function markerPlugin(state) {
  return {
    hooks: {
      draw: [
        (u) => {
          const ctx = u.ctx;
          const { left, top, width, height } = u.bbox;
          const right = left + width;
          const ratio = window.devicePixelRatio || 1;
          const lineWidth = Math.max(2, Math.round(2 * ratio));
          const drawn = [];
          ctx.save();
          for (const a of state.alerts) {
            if (a.state !== "resolved" || a.resolved_step == null) continue;
            const x1 = u.valToPos(a.step, "x", true);
            const x2 = Math.min(right, u.valToPos(a.resolved_step, "x", true));
            if (x2 < left || x1 > right) continue;
            // how long it held: a strip along the top, from the alert's step to its resolution
            ctx.fillStyle = "rgba(255,127,14,0.35)";
            ctx.fillRect(Math.max(left, x1), top, Math.max(1, x2 - Math.max(left, x1)), 6 * ratio);
          }
          for (const a of state.alerts) {
            const x = Math.round(u.valToPos(a.step, "x", true));
            if (x < left || x > right) continue;
            ctx.fillStyle = a.state === "resolved" ? RESOLVED : FIRING;
            ctx.fillRect(x - Math.floor(lineWidth / 2), top, lineWidth, height);
            drawn.push({ alert_id: a.alert_id, rule: a.rule, step: a.step, state: a.state, x: x / ratio });
          }
          ctx.fillStyle = FIRING;
          for (const step of state.nonfinite || []) {
            const x = u.valToPos(step, "x", true);
            if (x < left || x > right) continue;
            ctx.beginPath();
            ctx.moveTo(x, top + height);
            ctx.lineTo(x - 5 * ratio, top + height - 9 * ratio);
            ctx.lineTo(x + 5 * ratio, top + height - 9 * ratio);
            ctx.fill();
          }
          ctx.restore();
          state.drawn = drawn;
        },
      ],
    },
  };
}

// A line chart: series = [{label, color, band: [hiIndex, loIndex]?, faint?}], data = [x, ...ys].
// Registered as window.rankstream.charts[id] with the uPlot object and what its markers drew.
function lineChart(box, id, series, data, options) {
  const opts = options || {};
  const state = { alerts: opts.alerts || [], nonfinite: opts.nonfinite || [], drawn: [] };
  const bands = [];
  const uSeries = [{ label: "step" }];
  series.forEach((s, i) => {
    uSeries.push({
      label: s.label,
      stroke: s.color,
      width: s.faint ? 0.5 : 1.5,
      points: { show: false },
      spanGaps: false,
      value: (u, v) => fmtNum(v),
    });
    if (s.band) bands.push({ series: s.band, fill: s.color + "22" });
  });
  const u = new uPlot(
    {
      width: chartWidth(box),
      height: opts.height || 240,
      series: uSeries,
      bands: bands,
      scales: { x: { time: false }, y: { distr: opts.log ? 3 : 1 } },
      axes: [{ label: "step" }, { size: 74, values: (u, ticks) => ticks.map(fmtTick) }],
      cursor: { drag: { x: true, y: false } },
      plugins: [markerPlugin(state)],
      hooks: opts.hooks || {},
    },
    data,
    box,
  );
  window.rankstream.charts[id] = {
    kind: "line",
    uplot: u,
    markers: state,
    series: series.map((s) => s.label),
    points: data[0].length,
  };
  return { u, state };
}

// Viridis-like ramp, 0..1 -> css color.
function ramp(t) {
  const stops = [
    [68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37],
  ];
  const x = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

// A ranks x steps heatmap of /api/ranks data; the hottest rank of each column is recorded.
function heatmap(box, id, data, unit) {
  const wrap = el("div", { class: "heatmap" });
  box.append(wrap);
  const width = chartWidth(box);
  const rows = data.ranks.length;
  const cols = data.step.length;
  const cellH = Math.max(3, Math.min(14, Math.floor(280 / Math.max(rows, 1))));
  const padL = 52, padB = 22;
  const height = rows * cellH + padB;
  const ratio = window.devicePixelRatio || 1;
  const canvas = el("canvas", {});
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  canvas.style.width = width + "px";
  canvas.style.height = height + "px";
  wrap.append(canvas);
  const tip = el("div", { class: "tip" });
  wrap.append(tip);
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  let lo = Infinity, hi = -Infinity;
  for (const row of data.values) for (const v of row) if (v != null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const span = hi > lo ? hi - lo : 1;
  const cellW = (width - padL) / Math.max(cols, 1);
  const hottest = [];
  for (let c = 0; c < cols; c++) {
    let best = null, bestRank = null;
    for (let r = 0; r < rows; r++) {
      const v = data.values[r][c];
      if (v != null && (best == null || v > best)) { best = v; bestRank = data.ranks[r]; }
    }
    hottest.push(bestRank);
  }
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = data.values[r][c];
      ctx.fillStyle = v == null ? "#eceef2" : ramp((v - lo) / span);
      ctx.fillRect(padL + c * cellW, r * cellH, Math.ceil(cellW), cellH);
    }
  }
  ctx.fillStyle = "#6b7385";
  ctx.font = "10px system-ui, sans-serif";
  const every = Math.max(1, Math.ceil(rows / Math.floor((rows * cellH) / 12)));
  for (let r = 0; r < rows; r += every) ctx.fillText("rank " + data.ranks[r], 2, r * cellH + Math.min(cellH, 10));
  const ticks = Math.min(cols, 6);
  for (let t = 0; t < ticks; t++) {
    const c = Math.floor((t * (cols - 1)) / Math.max(ticks - 1, 1));
    const label = String(data.step[c]);
    const x = Math.min(padL + c * cellW, width - ctx.measureText(label).width - 2);
    ctx.fillText(label, x, rows * cellH + 14);
  }
  canvas.addEventListener("mousemove", (ev) => {
    const rect = canvas.getBoundingClientRect();
    const c = Math.floor((ev.clientX - rect.left - padL) / cellW);
    const r = Math.floor((ev.clientY - rect.top) / cellH);
    if (c < 0 || c >= cols || r < 0 || r >= rows) { tip.style.display = "none"; return; }
    const last = c + 1 < cols ? data.step[c + 1] - 1 : data.window.hi;
    tip.textContent = `rank ${data.ranks[r]}, steps ${data.step[c]}–${last}: ${fmtNum(data.values[r][c])} ${unit}`;
    tip.style.left = ev.clientX - rect.left + 12 + "px";
    tip.style.top = ev.clientY - rect.top + 12 + "px";
    tip.style.display = "block";
  });
  canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  window.rankstream.charts[id] = { kind: "heatmap", ranks: data.ranks, steps: data.step, hottest, lo, hi, canvas };
  return wrap;
}
