"""The broker is SIGKILLed for ~30 s in the middle of a 4-rank run: the aligned view still comes out whole.

Four real reporters (one thread per rank, in lockstep like synchronous training,
wall-clock ``ts``) keep stepping through the outage and spool; when the broker
is back each delivers its backlog at its own moment. The worker must hold or
revise steps rather than publish them partial, and must not mistake late
delivery for a lagging, silent, hung or lost rank (issue 18). A second test
ends the job while the broker is still down (close() spools what it could not
send) and delivers the spool with `rankstream spool flush` once it is back.
The broker is private (free ports), since killing the shared test broker would
break the other tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from rankstream.config import Settings
from rankstream.dev.stack import start_broker
from rankstream.producer import Reporter
from rankstream.schema import loads
from tests.integration.producer.support import consume, finished, inc_seq_problems
from tests.integration.streamkit import WorkerProcess, collect

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RANKS = 4
STEP_S = 0.05  # ~20 steps/s per rank
OUTAGE_S = 30.0
LIVENESS_RULES = {"rank_silent", "rank_hung", "run_lost", "rank_lagging"}


def kill_broker(settings: Settings, timeout_s: float = 30.0) -> None:
    """SIGKILL the broker of ``settings`` (a crash: no controlled shutdown) and wait until it is gone."""
    pid_file = settings.state_path / "kafka" / "broker.pid"
    pid = int(pid_file.read_text().strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # our child (start_broker): reap it
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "Z":
            continue
        time.sleep(0.1)
    raise AssertionError(f"broker pid {pid} still alive {timeout_s:.0f}s after SIGKILL")


def read_to_end(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[dict]:
    """Every record of ``topic`` up to its end offsets as of now."""
    consumer = KafkaConsumer(**settings.kafka_python_kwargs(), enable_auto_commit=False, group_id=None)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        records: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in parts) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(loads(r.value) for r in batch)
    finally:
        consumer.close()
    return records


def best_versions(steps: list[dict], run_id: str) -> dict[tuple[int, int], dict]:
    """Per (step, restart) the published version with the most ranks (what the store keeps)."""
    best: dict[tuple[int, int], dict] = {}
    for s in steps:
        if s["run_id"] != run_id:
            continue
        key = (s["step"], s["restart"])
        if key not in best or s["ranks_reported"] > best[key]["ranks_reported"]:
            best[key] = s
    return best


class Lockstep:
    """Ranks stepping together on a wall-clock schedule, like synchronous data-parallel training."""

    def __init__(self, reporters: list[Reporter]) -> None:
        self.reporters = reporters
        self.t0 = time.monotonic() + 0.5
        self.last_step = 10**9
        self.threads = [threading.Thread(target=self._train, args=(r,), name=f"rank-{r.rank}") for r in reporters]

    def _train(self, reporter: Reporter) -> None:
        step = 0
        while step <= self.last_step:
            delay = self.t0 + step * STEP_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            reporter.log(step, loss=2.0 / (step + 1) + 0.01 * reporter.rank, lr=1e-3, grad_norm=1.0)
            step += 1

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self, extra_steps: int = 10) -> int:
        """End the run a few steps from now (every rank reaches the same last step); returns it."""
        self.last_step = int((time.monotonic() - self.t0) / STEP_S) + extra_steps
        for t in self.threads:
            t.join(60)
            assert not t.is_alive(), f"{t.name} did not finish"
        return self.last_step


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _reporters(settings: Settings, run_id: str, spool_dir: Path) -> list[Reporter]:
    return [
        Reporter(
            run_id,
            settings=settings,
            spool_dir=spool_dir,
            rank=rank,
            world_size=RANKS,
            handle_signals=False,  # ranks are threads here; the test owns the process's signals
        )
        for rank in range(RANKS)
    ]


@pytest.fixture
def worker(private_broker: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A stream worker on the private broker; it must survive the outage and exit cleanly."""
    proc = WorkerProcess(private_broker.with_overrides(state_dir=str(tmp_path / "worker")), tmp_path / "worker.log")
    try:
        yield proc
    finally:
        code = proc.stop()
    assert code == 0, proc.log()


def _wait_until_aligning(settings: Settings, worker: WorkerProcess) -> None:
    early = collect(settings, settings.topics.steps, lambda r: len(r) >= 60, timeout_s=90)
    assert len(early) >= 60, worker.log()


def _assert_whole_run(
    settings: Settings, run_id: str, enqueued: dict[int, int], last_step: int, worker: WorkerProcess
) -> None:
    """Every seq on the events topic; every step complete in its fullest version; no false alert."""
    events = consume(settings, finished(run_id, RANKS), timeout=120)
    problems = inc_seq_problems(events, run_id)
    assert sorted(rank for rank, _inc in problems) == list(range(RANKS)), problems.keys()
    for (rank, inc), (missing, _duplicates) in problems.items():  # duplicates are allowed (dedup drops them)
        assert missing == [], (rank, inc, missing[:20], len(missing))
        top = max(e["seq"] for e in events if e["run_id"] == run_id and e["rank"] == rank and e["inc"] == inc)
        assert top == enqueued[rank] - 1, (rank, top, enqueued[rank])
    for rank in range(RANKS):
        stepped = {e["step"] for e in events if e["kind"] == "step" and e["rank"] == rank}
        assert stepped == set(range(last_step + 1)), rank

    def aligned(records: list[dict]) -> bool:
        best = best_versions(records, run_id)
        return all(best.get((s, 0), {}).get("ranks_reported") == RANKS for s in range(last_step + 1))

    steps = collect(settings, settings.topics.steps, aligned, timeout_s=150)
    best = best_versions(steps, run_id)
    assert {restart for _step, restart in best} == {0}
    partial = sorted(step for (step, _), s in best.items() if s["ranks_reported"] < RANKS)
    missing_steps = sorted(set(range(last_step + 1)) - {step for step, _ in best})
    revised = sum(1 for s in steps if s["run_id"] == run_id and s.get("revision"))
    assert not missing_steps and not partial, (
        f"{len(missing_steps)} steps never published {missing_steps[:10]}, {len(partial)} still partial "
        f"{partial[:10]} (of {last_step + 1}; {revised} revisions)\n{worker.log()}"
    )
    assert all(s["complete"] and s["missing_ranks"] == [] for s in best.values())

    # late delivery is not a liveness or lagging problem
    alerts = read_to_end(settings, settings.topics.alerts)
    false_alarms = [a for a in alerts if a["rule"] in LIVENESS_RULES and a["severity"] in ("warning", "critical")]
    assert false_alarms == [], false_alarms[:5]


def _kill_the_broker_mid_run(settings: Settings, worker: WorkerProcess, reporters: list[Reporter]) -> float:
    """Once the worker aligns the run, SIGKILL the broker and wait until every rank spools; when it died."""
    _wait_until_aligning(settings, worker)
    kill_broker(settings)
    killed_at = time.monotonic()
    _wait(lambda: all(r.stats["spooled"] > 0 for r in reporters), 20, "every rank to spool")
    return killed_at


def test_broker_sigkilled_mid_run_every_step_aligned_without_false_alerts(
    private_broker: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    settings, run_id = private_broker, "outage-run"
    reporters = _reporters(settings, run_id, tmp_path / "spool")
    loop = Lockstep(reporters)
    loop.start()
    try:
        killed_at = _kill_the_broker_mid_run(settings, worker, reporters)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed_at)))  # the outage itself
        start_broker(settings)
        _wait(lambda: all(r.stats["replayed"] > 0 for r in reporters), 60, "every rank to replay its spool")
    finally:
        last_step = loop.finish()
        for r in reporters:
            r.close(timeout=60)
    stats = {r.rank: r.stats for r in reporters}
    assert all(s["spool_pending"] == 0 and s["connects"] >= 2 for s in stats.values()), stats
    _assert_whole_run(settings, run_id, {rank: s["enqueued"] for rank, s in stats.items()}, last_step, worker)


def test_broker_back_after_the_job_ended_and_spool_flushed(
    private_broker: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    """The job ends during the outage (close() gives up and spools); `rankstream spool flush` delivers later."""
    settings, run_id = private_broker, "flushed-run"
    spool_dir = tmp_path / "spool"
    reporters = _reporters(settings, run_id, spool_dir)
    loop = Lockstep(reporters)
    loop.start()
    try:
        killed_at = _kill_the_broker_mid_run(settings, worker, reporters)
    finally:
        last_step = loop.finish(extra_steps=100)  # ~5 s more of training while the broker is down
        closers = [threading.Thread(target=r.close, kwargs={"timeout": 3}) for r in reporters]
        for t in closers:
            t.start()
        for t in closers:
            t.join(30)
    stats = {r.rank: r.stats for r in reporters}
    assert all(s["spool_pending"] > 0 for s in stats.values()), stats  # left on disk for the flush
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed_at)))  # the rest of the outage
    start_broker(settings)
    cli = [sys.executable, "-m", "rankstream.cli", "spool", "flush", str(spool_dir)]
    flush = subprocess.run(
        [*cli, "--bootstrap", settings.bootstrap_servers, "--prefix", settings.topic_prefix],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert flush.returncode == 0, flush.stdout + flush.stderr
    _assert_whole_run(settings, run_id, {rank: s["enqueued"] for rank, s in stats.items()}, last_step, worker)
