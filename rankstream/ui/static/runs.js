"use strict";
// The runs list: filters in the URL, refreshed every 5 s, selected runs open the compare page.

const form = document.getElementById("filters");
const params = new URLSearchParams(location.search);
for (const name of ["team", "project", "status", "since"]) if (params.get(name)) form.elements[name].value = params.get(name);

function query() {
  const q = new URLSearchParams();
  for (const name of ["team", "project", "status", "since"]) if (form.elements[name].value) q.set(name, form.elements[name].value);
  return q;
}

async function load() {
  const runs = await getJSON("/api/runs?" + query());
  window.rankstream.data.runs = runs;
  const body = document.querySelector("#runs tbody");
  const checked = new Set([...body.querySelectorAll("input:checked")].map((box) => box.value));
  body.replaceChildren();
  for (const run of runs) {
    const link = el("a", { href: "/run?run=" + encodeURIComponent(run.run_id), text: run.run_name || run.run_id });
    const box = el("input", { type: "checkbox", value: run.run_id });
    box.checked = checked.has(run.run_id);
    body.append(
      el("tr", { "data-run": run.run_id },
        el("td", {}, box),
        el("td", {}, link, el("div", { class: "note", text: run.run_id })),
        el("td", { text: run.team }),
        el("td", { text: run.project }),
        el("td", {}, el("span", { class: "status status-" + run.status, text: run.status })),
        el("td", { class: "num", text: String(run.world_size) }),
        el("td", { class: "num", text: run.last_step == null ? "–" : String(run.last_step) }),
        el("td", { class: "num" + (run.firing ? " firing" : ""), text: String(run.firing) }),
        el("td", { text: fmtTime(run.started_at) }),
        el("td", { text: fmtTime(run.updated_at) }),
      ),
    );
  }
  document.getElementById("live").textContent = `${runs.length} runs · refreshed ${new Date().toLocaleTimeString()}`;
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  history.replaceState(null, "", "/?" + query());
  load().catch(showError);
});
document.getElementById("compare").addEventListener("click", () => {
  const ids = [...document.querySelectorAll("#runs tbody input:checked")].map((box) => box.value);
  if (ids.length < 2) { showError("select two or more runs to compare"); return; }
  location.href = "/compare?" + ids.map((id) => "run=" + encodeURIComponent(id)).join("&");
});

load()
  .catch((err) => showError(err.message || err))
  .finally(() => { window.rankstream.ready = true; });
setInterval(() => load().catch(showError), 5000);
