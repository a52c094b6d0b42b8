"use strict";
// Two or more runs overlaid by step: loss, lr and grad norm (the mean over ranks, same buckets for every run).

const runIds = new URLSearchParams(location.search).getAll("run");
const CHARTS = [["loss", "loss"], ["lr", "learning rate"], ["grad_norm", "grad norm"]];

async function main() {
  if (runIds.length < 1) throw new Error("no runs to compare: open /compare?run=A&run=B");
  const infos = await Promise.all(runIds.map((id) => getJSON("/api/run?run=" + encodeURIComponent(id))));
  const meta = document.getElementById("meta");
  infos.forEach((info, i) => {
    const swatch = el("b", { text: "■ " });
    swatch.style.color = PALETTE[i % PALETTE.length];
    meta.append(el("span", {}, swatch, el("a", { href: "/run?run=" + encodeURIComponent(info.run_id), text: info.run_name || info.run_id }), ` (${info.status}, last step ${info.last_step ?? "–"})`));
  });
  const q = runIds.map((id) => "run=" + encodeURIComponent(id)).join("&");
  const data = await getJSON(`/api/compare?${q}&metric=loss&metric=lr&metric=grad_norm&points=${Math.round(window.innerWidth)}`);
  window.rankstream.data.compare = data;
  const grid = document.getElementById("curves");
  for (const [metric, title] of CHARTS) {
    const box = panel(grid, metric, title);
    const per = data.series[metric] || {};
    if (!data.step.length || runIds.every((id) => !(per[id] || []).some((v) => v != null))) {
      box.append(el("p", { class: "note", text: "no data" }));
      continue;
    }
    const series = runIds.map((id, i) => ({ label: infos[i].run_name || id, color: PALETTE[i % PALETTE.length] }));
    lineChart(box, metric, series, [data.step, ...runIds.map((id) => per[id])]);
  }
}

main()
  .catch((err) => showError(err.message || err))
  .finally(() => { window.rankstream.ready = true; });
