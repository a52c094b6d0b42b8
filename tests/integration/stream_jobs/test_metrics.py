"""The worker's /metrics scraped by a real Prometheus (Debian's), with the example rules loaded."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rankstream.config import Settings
from rankstream.dev.synthetic import Fault, generate_run
from tests.integration.conftest import free_port
from tests.integration.streamkit import WorkerProcess, produce
from tests.paths import REPO_ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RULES = REPO_ROOT / "infra" / "prometheus" / "rankstream-rules.yml"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _wait(what: str, probe: Callable[[], Any], timeout_s: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except OSError as exc:  # not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s:.0f}s (last: {last!r})")


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    subprocess.run(["bash", str(REPO_ROOT / "infra" / "prometheus" / "install.sh")], check=True, timeout=600)
    binary = shutil.which("prometheus")
    assert binary, "infra/prometheus/install.sh left no prometheus on PATH"
    return binary


@pytest.fixture
def worker_with_metrics(kafka: Settings, tmp_path: Path) -> Iterator[tuple[WorkerProcess, int]]:
    worker = WorkerProcess(kafka, tmp_path / "worker.log", extra_args=["--metrics-port", "0"])
    try:
        found = _wait(
            "the worker prints its metrics URL",
            lambda: re.search(r"metrics at http://127\.0\.0\.1:(\d+)/", worker.log()),
        )
        yield worker, int(found.group(1))
    finally:
        assert worker.stop() == 0, worker.log()


def _samples(port: int, name: str, run_id: str | None) -> list[Any]:
    return [
        sample
        for family in text_string_to_metric_families(_get(f"http://127.0.0.1:{port}/metrics"))
        for sample in family.samples
        if sample.name == name and (run_id is None or sample.labels.get("run_id") == run_id)
    ]


def _loss_on_metrics(port: int, run_id: str) -> float | None:
    found = _samples(port, "rankstream_run_loss", run_id)
    return found[0].value if found else None


def test_prometheus_scrapes_the_worker_and_promql_returns_the_runs_loss(
    kafka: Settings, tmp_path: Path, prometheus_binary: str, worker_with_metrics: tuple[WorkerProcess, int]
) -> None:
    _, port = worker_with_metrics
    events = generate_run(
        "m1", world_size=4, steps=80, faults=[Fault("straggler", step=30, rank=2, duration=30)], seed=5
    )
    # no run_end: a run that ends resolves what it fired, and the straggler must still be firing when scraped
    produce(kafka, [e for e in events if e["kind"] != "run_end"])
    _wait("the run's loss on /metrics", lambda: _loss_on_metrics(port, "m1") is not None)
    firing = _wait("the straggler alert on /metrics", lambda: _samples(port, "rankstream_run_alerts_firing", "m1"))
    assert {(s.labels["rule"], s.labels["severity"]) for s in firing} >= {("straggler", "warning")}
    [straggler_rank] = [
        s for s in _samples(port, "rankstream_run_rank_straggler_score", "m1") if s.labels["rank"] == "2"
    ]
    assert straggler_rank.value > 1.2
    assert _samples(port, "rankstream_worker_publish_latency_seconds_count", None)

    rules = tmp_path / "rankstream-rules.yml"
    shutil.copy(RULES, rules)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{rules}]\n"
        "scrape_configs:\n"
        f"  - job_name: rankstream-worker\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )
    web = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        api = f"http://127.0.0.1:{web}/api/v1"
        query = urllib.parse.quote('rankstream_run_loss{run_id="m1"}')
        result = _wait(
            "PromQL returns the run's loss", lambda: json.loads(_get(f"{api}/query?query={query}"))["data"]["result"]
        )
        [series] = result
        assert series["metric"]["run_name"] == "tiny-llama-m1" and series["metric"]["team"] == "team-a"
        # the run is over: the newest loss stays what the worker shows
        assert float(series["value"][1]) == pytest.approx(_loss_on_metrics(port, "m1"))
        groups = _wait(
            "the example rules are evaluated",
            lambda: [
                g
                for g in json.loads(_get(f"{api}/rules"))["data"]["groups"]
                if all(r.get("lastEvaluation", "").startswith("2") for r in g["rules"])
            ],
        )
        evaluated = [r for g in groups for r in g["rules"]]
        assert len(evaluated) == 9 and all(r["health"] == "ok" for r in evaluated), evaluated
    finally:
        prometheus.terminate()
        prometheus.wait(30)
        log.close()
