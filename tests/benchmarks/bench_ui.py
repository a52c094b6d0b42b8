"""Benchmark: the UI's JSON for one run's loss chart, against the plain SQL query of the same curve.

A store is served by ``rankstream store serve`` (embedded chDB) and filled inside chDB with
INSERT ... SELECT FROM numbers(): ``step_metrics`` holds >= 10M rows (50 runs of 10k steps x
10 metrics, and one run of 1M steps x 5 metrics, world size 256), ``steps`` the big run's 1M
aligned steps, ``metrics`` the per-rank step time of its latest 7,800 steps x 256 ranks (the
window its heatmap reads: a per-rank view never reads more than ``RANK_ROWS_LIMIT`` rows).
``rankstream ui`` runs as a child process over that store, as a user would start it.

Prints one JSON line (medians of 15 requests after 3 warm-ups, all in the same run):

* ``ui_loss_chart_ms``: GET /api/series for one 10k-step run (HTTP, SQL downsampling, JSON);
  ``sql_loss_curve_ms``: the cookbook's ``loss-curve-aligned`` query of that run through
  clickhouse-connect (every step, no downsampling); ``ratio`` = ui / sql (target: ui <= 100 ms);
* ``ui_big_loss_chart_ms`` / ``sql_big_loss_curve_ms``: the same for the 1M-step run (target <= 1 s);
* ``ui_big_heatmap_ms``: GET /api/ranks (256 ranks x its window) for the big run.

Run: ``.venv/bin/python tests/benchmarks/bench_ui.py``. Needs no broker.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from rankstream.sinks.store import portfile  # noqa: E402
from rankstream.sinks.store.query import local_client  # noqa: E402
from tests.integration.sinks.support import cookbook_queries  # noqa: E402

RUNS, RUN_STEPS, METRICS = 50, 10_000, 10
BIG_STEPS, BIG_METRICS, BIG_RANKS = 1_000_000, 5, 256
WINDOW_STEPS = 7_800


def _fill(client) -> int:
    names = (
        "['loss','lr','grad_norm','grad_norm_adapter','grad_norm_backbone','step_time_s','data_time_s',"
        "'compute_time_s','mem_peak_mb','tokens_per_s']"
    )
    per_run = RUN_STEPS * METRICS
    client.command(
        f"""
        INSERT INTO rankstream.step_metrics
            (team, run_id, metric, step, attempt, ts_first, mean, min, max, std, argmin, argmax, n)
        SELECT 'nlp', concat('r-', toString(intDiv(number, {per_run}))), {names}[number % {METRICS} + 1],
               intDiv(number % {per_run}, {METRICS}) AS s, 0, toDateTime64(1750000000 + s, 6, 'UTC'),
               2.0 / (1 + s / 1000) + 0.01 * sin(s) AS m, m - 0.05, m + 0.05, 0.02, 0, 7, 8
        FROM numbers({RUNS * per_run})
        """,
        settings={"async_insert": 0},
    )
    client.command(
        f"""
        INSERT INTO rankstream.step_metrics
            (team, run_id, metric, step, attempt, ts_first, mean, min, max, std, argmin, argmax, n)
        SELECT 'nlp', 'big', {names}[number % {BIG_METRICS} + 1], intDiv(number, {BIG_METRICS}) AS s, 0,
               toDateTime64(1750000000 + s, 6, 'UTC'), 2.0 / (1 + s / 1e5) + 0.01 * sin(s) AS m, m - 0.05, m + 0.05,
               0.02, 0, 255, {BIG_RANKS}
        FROM numbers({BIG_STEPS * BIG_METRICS})
        """
    )
    client.command(
        f"""
        INSERT INTO rankstream.steps (team, run_id, step, attempt, world_size, ranks_reported, complete, ts_first,
                                      ts_last, extra)
        SELECT 'nlp', 'big', number, 0, {BIG_RANKS}, {BIG_RANKS}, true, toDateTime64(1750000000 + number, 6, 'UTC'),
               toDateTime64(1750000000 + number, 6, 'UTC'), '{{}}'
        FROM numbers({BIG_STEPS})
        """
    )
    first = BIG_STEPS - WINDOW_STEPS
    client.command(
        f"""
        INSERT INTO rankstream.metrics (team, run_id, metric, kind, step, rank, seq, ts, value, host, world_size)
        SELECT 'nlp', 'big', 'step_time_s', 'step', {first} + intDiv(number, {BIG_RANKS}) AS s,
               number % {BIG_RANKS} AS r, s, toDateTime64(1750000000 + s, 6, 'UTC'),
               0.5 + if(r = 17, 0.2, 0.0) + 0.01 * sin(number), 'node0', {BIG_RANKS}
        FROM numbers({WINDOW_STEPS * BIG_RANKS})
        """
    )
    return int(client.command("SELECT count() FROM rankstream.step_metrics"))


def _median_ms(call: Callable[[], object], runs: int = 15, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=120) as response:
        return json.loads(response.read())


def _wait(condition: Callable[[], object], what: str, timeout_s: float = 120) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise SystemExit(f"bench_ui: timed out waiting for {what}")


def main() -> None:
    env = {
        **os.environ,
        "RANKSTREAM_STORE_PASSWORD": os.environ.get("RANKSTREAM_STORE_PASSWORD") or secrets.token_hex(12),
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(env)
    rankstream = [sys.executable, "-m", "rankstream.cli"]
    with tempfile.TemporaryDirectory(prefix="bench_ui_") as tmp:
        store = Path(tmp) / "store"
        log = (Path(tmp) / "store.log").open("wb")
        server = subprocess.Popen(
            [*rankstream, "store", "serve", "--path", str(store), "--port", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        ui = None
        try:
            address = _wait(lambda: portfile.find_server(store), "the store server")
            assert isinstance(address, tuple)
            client = local_client(store, address, send_receive_timeout=600)
            from rankstream.sinks.store.migrations import migrate

            migrate(client)
            rows = _fill(client)
            ui = subprocess.Popen(
                [*rankstream, "ui", "--dsn", f"chdb://{store}", "--port", "0"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
            )
            assert ui.stdout is not None
            line = ui.stdout.readline().decode()
            if "serving http" not in line:
                raise SystemExit(f"bench_ui: rankstream ui did not start: {line}")
            base = line.split()[3].rstrip("/")
            sql = cookbook_queries()["loss-curve-aligned"]
            run = f"r-{RUNS // 2}"

            def ui_chart(run_id: str) -> Callable[[], object]:
                def call() -> object:
                    data = _get(f"{base}/api/series?run={run_id}&metric=loss&points=1000")
                    assert len(data["metrics"]["loss"]["step"]) >= 1000
                    return data

                return call

            def sql_curve(run_id: str, steps: int) -> Callable[[], object]:
                def call() -> object:
                    result = client.query(sql, parameters={"run_id": run_id})
                    assert len(result.result_rows) == steps
                    return result

                return call

            ui_ms = _median_ms(ui_chart(run))
            sql_ms = _median_ms(sql_curve(run, RUN_STEPS))
            big_ui_ms = _median_ms(ui_chart("big"), runs=7, warmup=1)
            big_sql_ms = _median_ms(sql_curve("big", BIG_STEPS), runs=3, warmup=1)

            def heatmap() -> object:
                data = _get(f"{base}/api/ranks?run=big&metric=step_time_s&points=400")
                assert len(data["ranks"]) == BIG_RANKS and data["window"]["clipped"]
                return data

            heat_ms = _median_ms(heatmap, runs=7, warmup=1)
            client.close()
        finally:
            for proc in (ui, server):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)
            log.close()
    print(
        json.dumps(
            {
                "bench": "ui",
                "store_step_metrics_rows": rows,
                "ui_loss_chart_ms": round(ui_ms, 2),
                "sql_loss_curve_ms": round(sql_ms, 2),
                "ratio": round(ui_ms / sql_ms, 3),
                "run_steps": RUN_STEPS,
                "ui_big_loss_chart_ms": round(big_ui_ms, 2),
                "sql_big_loss_curve_ms": round(big_sql_ms, 2),
                "big_ratio": round(big_ui_ms / big_sql_ms, 3),
                "big_run_steps": BIG_STEPS,
                "ui_big_heatmap_ms": round(heat_ms, 2),
                "big_run_ranks": BIG_RANKS,
            }
        )
    )


if __name__ == "__main__":
    main()
