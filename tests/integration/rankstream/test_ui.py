"""`rankstream ui` in a real browser (Debian's chromium via Playwright) over a store the real pipeline filled.

The pages must load without console errors, draw their canvases with the expected series,
mark every alert at its step (the marker's pixels checked on the canvas, in the colour of its
state), show the straggler and the memory-hungry rank in the per-rank views, overlay runs on
the compare page, and follow a run that is still training. The JSON each page draws is asserted too.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rankstream.config import Settings
from rankstream.dev.synthetic import Fault, generate_run
from tests.integration.rankstream.browser import Page, browser, new_page, watch
from tests.integration.rankstream.pipeline_store import FAULTS, STEPS, WORLD_SIZE, PipelineStore, pipeline_store
from tests.integration.rankstream.ui_server import UIServer
from tests.integration.sinks.support import wait_until
from tests.integration.streamkit import produce, replay

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FAULTY = "run-ui-faulty"
HEALTHY = "run-ui-healthy"
FIRING_RGB = [214, 39, 40]
RESOLVED_RGB = [255, 127, 14]


@pytest.fixture(scope="module")
def store(kafka_broker: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStore]:
    runs = {FAULTY: list(FAULTS), HEALTHY: []}
    with pipeline_store(kafka_broker, tmp_path_factory.mktemp("ui"), runs, lora=frozenset({HEALTHY})) as filled:
        yield filled


@pytest.fixture(scope="module")
def ui(store: PipelineStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    server = UIServer(store.dsn, tmp_path_factory.mktemp("ui-server") / "ui.log")
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log_path.read_text()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as launched:
        yield launched


def expected_states(store: PipelineStore, run_id: str) -> dict[str, tuple[int, str]]:
    """alert_id -> (step, firing|resolved) as replay computed them."""
    run = store.runs[run_id]
    resolved = {a["alert_id"] for a in run.expected.resolved}
    return {a["alert_id"]: (a["step"], "resolved" if a["alert_id"] in resolved else "firing") for a in run.firing}


def test_runs_page_lists_runs_with_status_last_step_and_firing_alerts(
    store: PipelineStore, ui: UIServer, chromium: Any, tmp_path: Path
) -> None:
    listed = {r["run_id"]: r for r in ui.get("/api/runs")}
    assert set(listed) == {FAULTY, HEALTHY}
    for run_id in (FAULTY, HEALTHY):
        row = listed[run_id]
        firing = sum(state == "firing" for _, state in expected_states(store, run_id).values())
        assert (row["team"], row["project"], row["status"]) == ("nlp", "synthetic", "finished")
        assert (row["world_size"], row["last_step"], row["firing"]) == (WORLD_SIZE, STEPS - 1, firing)
    assert ui.get("/api/runs?team=other") == []
    assert ui.get("/api/runs?status=lost") == []
    with new_page(chromium) as page:
        page.open(ui.url + "/")
        rows = page.js("[...document.querySelectorAll('#runs tbody tr')].map(r => r.dataset.run)")
        assert sorted(rows) == [FAULTY, HEALTHY]
        cells = page.js(
            "[...document.querySelectorAll(`#runs tbody tr[data-run='" + FAULTY + "'] td`)].map(td => td.innerText)"
        )
        assert cells[4] == "finished" and cells[6] == str(STEPS - 1)
        page.screenshot(tmp_path, "ui-runs")
        page.open(ui.url + "/?status=running")
        assert page.js("document.querySelectorAll('#runs tbody tr').length") == 0
        assert page.problems() == []


def test_run_page_draws_curves_band_heatmaps_memory_and_alert_markers_at_their_steps(
    store: PipelineStore, ui: UIServer, chromium: Any, tmp_path: Path
) -> None:
    run = store.runs[FAULTY]
    # The JSON the loss chart draws: fewer steps than buckets, so every step's exact mean and band.
    series = ui.get(f"/api/series?run={FAULTY}&metric=loss&points=1000")["metrics"]["loss"]
    by_step = {s["step"]: s["metrics"]["loss"] for s in run.expected.steps}
    assert series["step"] == sorted(by_step)
    for step, mean, lo, hi in zip(series["step"], series["mean"], series["min"], series["max"], strict=True):
        want = by_step[step]
        assert math.isclose(mean, want["mean"], rel_tol=1e-9) and (lo, hi) == (want["min"], want["max"])
    spike = next(f.step for f in FAULTS if f.kind == "loss_spike")
    assert series["step"][series["mean"].index(max(series["mean"]))] == spike
    states = expected_states(store, FAULTY)
    alerts = ui.get(f"/api/alerts?run={FAULTY}")
    assert {a["alert_id"]: (a["step"], a["state"]) for a in alerts} == states
    assert {a["rule"] for a in alerts} >= {"loss_spike", "straggler", "memory_pressure"}

    with new_page(chromium) as page:
        page.open(f"{ui.url}/run?run={FAULTY}")
        charts = page.js("Object.fromEntries(Object.entries(rankstream.charts).map(([k, c]) => [k, c.kind]))")
        assert charts == {
            "loss": "line",
            "lr": "line",
            "grad_norm": "line",
            "heat_step_time_s": "heatmap",
            "heat_data_time_s": "heatmap",
            "heat_compute_time_s": "heatmap",
            "memory": "line",
        }
        assert page.js("document.querySelectorAll('canvas').length") >= len(charts)
        assert page.js("rankstream.charts.loss.series") == ["loss mean", "min over ranks", "max over ranks"]
        assert page.js("rankstream.charts.loss.points") == STEPS
        # Every alert is marked at its step, in its state's colour, on the canvas itself.
        drawn = page.js(
            """(() => { const c = rankstream.charts.loss, u = c.uplot;
                 return c.markers.drawn.map(m => { const x = Math.round(u.valToPos(m.step, 'x', true));
                   const y = Math.round(u.bbox.top + u.bbox.height / 2);
                   return [m.alert_id, m.step, m.state, Array.from(u.ctx.getImageData(x, y, 1, 1).data)]; }); })()"""
        )
        assert {alert_id: (step, state) for alert_id, step, state, _ in drawn} == states
        shared = {step for _, step, _, _ in drawn if sum(s == step for _, s, _, _ in drawn) > 1}
        for _alert_id, step, state, rgba in drawn:
            colour = FIRING_RGB if state == "firing" else RESOLVED_RGB
            if step not in shared:  # alerts at one step share a line: the last one drawn shows
                assert rgba == [*colour, 255], (step, state, rgba)
        # The straggler is the hottest rank of the compute-time heatmap while it lasts.
        straggler = next(f for f in FAULTS if f.kind == "straggler")
        heat = page.js(
            "(() => { const h = rankstream.charts.heat_compute_time_s; return [h.steps, h.hottest, h.ranks]; })()"
        )
        steps, hottest, ranks = heat
        assert ranks == list(range(WORLD_SIZE))
        during = [rank for step, rank in zip(steps, hottest, strict=True) if step in straggler.steps]
        assert during and set(during) == {straggler.rank}
        # Memory per rank: one series per rank, the memory-hungry rank peaks where the fault was.
        assert page.js("rankstream.charts.memory.series") == [f"rank {r}" for r in range(WORLD_SIZE)]
        memory = ui.get(f"/api/ranks?run={FAULTY}&metric=mem_peak_mb")
        pressure = next(f for f in FAULTS if f.kind == "memory_pressure")
        peak_rank = max(range(WORLD_SIZE), key=lambda r: max(v for v in memory["values"][r] if v is not None))
        assert peak_rank == pressure.rank
        top = memory["values"][peak_rank]
        assert memory["step"][top.index(max(v for v in top if v is not None))] in pressure.steps
        # The alert list shows every alert with its state and evidence.
        table = page.js(
            "[...document.querySelectorAll('#alerts tbody tr')].map(r => [r.dataset.alert, r.cells[1].innerText])"
        )
        assert {alert_id: text.split()[0] for alert_id, text in table} == {k: s for k, (_, s) in states.items()}
        page.screenshot(tmp_path, "ui-run")
        # Zooming the loss curve onto the straggler's steps narrows the per-rank views to them.
        first, last = straggler.steps[0], straggler.steps[-1]
        page.js(f"rankstream.charts.loss.uplot.setScale('x', {{min: {first}, max: {last}}})")
        page.page.wait_for_function(f"rankstream.charts.heat_compute_time_s.steps[0] === {first}", timeout=30_000)
        zoomed = page.js("rankstream.charts.heat_compute_time_s")
        assert zoomed["steps"] == list(range(first, last + 1)) and set(zoomed["hottest"]) == {straggler.rank}
        assert page.js("document.getElementById('window').innerText") == f"steps {first}–{last}, 1 step(s) per cell"
        assert page.problems() == []


def test_compare_page_overlays_runs_on_one_step_axis(ui: UIServer, chromium: Any, tmp_path: Path) -> None:
    data = ui.get(f"/api/compare?run={FAULTY}&run={HEALTHY}&metric=loss&metric=lr&metric=grad_norm&points=1000")
    assert data["step"] == list(range(STEPS))
    for metric in ("loss", "lr", "grad_norm"):
        assert set(data["series"][metric]) == {FAULTY, HEALTHY}
        assert all(len(v) == STEPS and None not in v for v in data["series"][metric].values())
    spike = next(f.step for f in FAULTS if f.kind == "loss_spike")
    faulty, healthy = data["series"]["loss"][FAULTY], data["series"]["loss"][HEALTHY]
    assert faulty[spike] > 2 * healthy[spike]
    with new_page(chromium) as page:
        page.open(f"{ui.url}/compare?run={FAULTY}&run={HEALTHY}")
        for metric in ("loss", "lr", "grad_norm"):
            assert page.js(f"rankstream.charts['{metric}'].series") == [f"tiny-llama-{FAULTY}", f"tiny-llama-{HEALTHY}"]
            assert page.js(f"rankstream.charts['{metric}'].points") == STEPS
        assert page.js("document.querySelectorAll('canvas').length") >= 3
        page.screenshot(tmp_path, "ui-compare")
        # The LoRA run's grad norm chart splits the adapter's from the backbone's.
        page.open(f"{ui.url}/run?run={HEALTHY}")
        assert page.js("rankstream.charts.grad_norm.series") == ["grad_norm", "grad_norm_adapter", "grad_norm_backbone"]
        assert page.js("rankstream.charts.grad_norm.points") == STEPS
        assert page.problems() == []


def test_run_page_follows_a_run_while_it_trains(
    store: PipelineStore, ui: UIServer, chromium: Any, tmp_path: Path
) -> None:
    run_id = "run-ui-live"
    events = generate_run(run_id, world_size=4, steps=STEPS, faults=[Fault("loss_spike", step=70)], seed=3, team="nlp")
    expected = replay(events)
    assert [(a["rule"], a["step"]) for a in expected.alerts] == [("loss_spike", 70)]
    first = [e for e in events if e["kind"] != "run_end" and e["step"] < 100]
    rest = [e for e in events if e not in first]
    produce(store.settings, first)
    wait_until(lambda: (ui.get("/api/runs?status=running") or [{}])[0].get("last_step", -1) >= 90, "the live run")
    with new_page(chromium) as page:
        page.open(f"{ui.url}/run?run={run_id}")
        assert page.js("rankstream.data.info.status") == "running"
        assert page.js("document.getElementById('live').innerText").startswith("live · step ")
        assert ["loss_spike", 70] in page.js("rankstream.charts.loss.markers.drawn.map(m => [m.rule, m.step])")
        page.screenshot(tmp_path, "ui-live-early")
        produce(store.settings, rest)
        # No reload: the page polls the run and redraws once the sink stored the rest.
        page.page.wait_for_function(
            f"rankstream.data.info.last_step === {STEPS - 1} && rankstream.data.info.status === 'finished'"
            f" && rankstream.charts.loss && rankstream.charts.loss.points === {STEPS}",
            timeout=120_000,
        )
        drawn = page.js("rankstream.charts.loss.markers.drawn.map(m => [m.rule, m.step, m.state])")
        assert drawn == [["loss_spike", 70, "resolved"]]  # the run's end resolved it
        page.screenshot(tmp_path, "ui-live-finished")
        assert page.problems() == []


def add_user(store: PipelineStore, team: str) -> tuple[str, str]:
    """A read-only team user of the store (``rankstream store user add``): (name, password)."""
    path = store.dsn.removeprefix("chdb://")
    out = subprocess.run(
        [sys.executable, "-m", "rankstream.cli", "store", "user", "add", team, "--path", path],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    match = re.search(r"user (\S+) .*password: (\S+)", out, re.IGNORECASE)
    assert match, out
    return match.group(1), match.group(2)


def test_with_login_each_viewer_sees_what_their_store_user_may_read(
    store: PipelineStore, chromium: Any, tmp_path: Path
) -> None:
    nlp, vision = add_user(store, "nlp"), add_user(store, "vision")
    server = UIServer(store.dsn, tmp_path / "ui-login.log", "--login")
    try:
        assert server.status("/api/runs") == 401
        assert server.status("/") == 401
        assert server.status("/api/runs", (nlp[0], "wrong")) == 401
        assert {r["run_id"] for r in server.get("/api/runs", nlp)} >= {FAULTY, HEALTHY}
        assert server.get("/api/runs", vision) == []  # the store's team filter, not the UI, hides them
        assert server.status(f"/api/run?run={FAULTY}", vision) == 404
        assert server.get(f"/api/alerts?run={FAULTY}", vision) == []
        mine = server.get(f"/api/series?run={FAULTY}&metric=loss&points=1000", nlp)["metrics"]["loss"]
        assert len(mine["step"]) == STEPS
        context = chromium.new_context(http_credentials={"username": nlp[0], "password": nlp[1]})
        try:
            page = Page(context.new_page())
            watch(page)
            page.open(f"{server.url}/run?run={FAULTY}")
            assert page.js("rankstream.charts.loss.points") == STEPS
            assert page.problems() == []
        finally:
            context.close()
    finally:
        assert server.stop() == 0, server.log_path.read_text()
