"""A store filled by a real pipeline run, for the UI and export tests.

Synthetic faulty runs (rankstream.dev.synthetic) go through the real broker, a real
``rankstream worker`` (aligned steps, alerts) and a real ``rankstream sink`` owning an
embedded chDB store; the store is ready once it holds exactly what ``rankstream replay``
computes for the same events (every step, every alert) and every raw event.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankstream.config import Settings
from rankstream.dev.synthetic import Fault, generate_run
from rankstream.kafka_admin import ensure_topics
from rankstream.stream_jobs.core import Output
from tests.integration.sinks.support import SinkProcess, http_client, wait_until
from tests.integration.streamkit import WorkerProcess, produce, replay

WORLD_SIZE = 8
STEPS = 160
#: The faulty run: its alerts are what the UI must mark on its curves.
FAULTS = (
    Fault("loss_spike", step=70),
    Fault("straggler", step=40, rank=5, duration=40),
    Fault("memory_pressure", step=110, rank=2, duration=10),
)


@dataclass
class PipelineRun:
    """One run as the pipeline stored it, with what replay says it must contain."""

    run_id: str
    events: list[dict[str, Any]]
    expected: Output

    @property
    def firing(self) -> list[dict[str, Any]]:
        return list(self.expected.alerts)

    @property
    def alert_records(self) -> list[dict[str, Any]]:
        """Firing and resolved records: the rows the alerts table holds."""
        return self.expected.all_alerts()

    @property
    def steps(self) -> set[int]:
        return {s["step"] for s in self.expected.steps}


@dataclass
class PipelineStore:
    """The sink's store: its DSN, HTTP address and the runs in it."""

    dsn: str
    host: str
    port: int
    settings: Settings
    runs: dict[str, PipelineRun] = field(default_factory=dict)

    def client(self) -> Any:
        return http_client(self.host, self.port)


def _counts(client: Any, run_id: str) -> tuple[int, int, int]:
    """(aligned steps, alerts, raw events) of a run as the store has them now."""
    sql = (
        "SELECT (SELECT uniqExact(step) FROM rankstream.step_metrics FINAL WHERE run_id = {r:String}),"
        " (SELECT count() FROM rankstream.alerts FINAL WHERE run_id = {r:String}),"
        " (SELECT count() FROM rankstream.events FINAL WHERE run_id = {r:String})"
    )
    row = client.query(sql, parameters={"r": run_id}).result_rows[0]
    return int(row[0]), int(row[1]), int(row[2])


def _want(run: PipelineRun) -> tuple[int, int, int]:
    return len(run.steps), len(run.alert_records), len(run.events)


@contextmanager
def pipeline_store(
    broker: Settings, tmp: Path, runs: dict[str, list[Fault]], lora: frozenset[str] = frozenset()
) -> Iterator[PipelineStore]:
    """Worker + sink on fresh topics, ``runs`` (run_id -> faults; LoRA runs in ``lora``) produced, yielded once
    fully stored."""
    settings = broker.with_overrides(
        topic_prefix=f"ui{uuid.uuid4().hex[:10]}", state_dir=str(tmp / "state"), partitions=3
    )
    ensure_topics(settings)
    stored: list[PipelineRun] = []
    for index, (run_id, faults) in enumerate(runs.items()):
        events = generate_run(
            run_id, world_size=WORLD_SIZE, steps=STEPS, faults=faults, seed=index, team="nlp", lora=run_id in lora
        )
        stored.append(PipelineRun(run_id, events, replay(events)))
    store_path = tmp / "store"
    dsn = f"chdb://{store_path}"
    worker = WorkerProcess(settings, tmp / "worker.log")
    sink = SinkProcess(settings, dsn, tmp / "sink.log", "--http-port", "0", "--batch-seconds", "0.2").start()
    try:
        host, port = sink.wait_ready(store_path)
        for run in stored:
            produce(settings, run.events)
        client = http_client(host, port)
        try:
            wait_until(
                lambda: all(_counts(client, r.run_id) == _want(r) for r in stored),
                "the pipeline to store every run",
                timeout_s=180,
                interval_s=0.5,
            )
        except AssertionError as exc:
            detail = {r.run_id: (_counts(client, r.run_id), _want(r)) for r in stored}
            raise AssertionError(f"{exc}: stored vs expected (steps, alerts, events) {detail}") from None
        client.close()
        yield PipelineStore(dsn, host, port, settings, {run.run_id: run for run in stored})
    finally:
        worker.stop()
        sink.stop()
