"""A private broker is stopped mid-run and restarted: the run still arrives with no seq gaps.

The session broker is shared with other tests, so this test starts its own
broker on free ports and stops only that one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.dev.stack import start_broker, stop_broker
from rankstream.producer import Reporter
from tests.integration.producer.support import consume, finished, seq_problems

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

OUTAGE_S = 12.0


def _one_rank(settings: Settings, tmp_path: Path, run_id: str, heartbeat_s: float) -> Reporter:
    spool = tmp_path / "spool"
    return Reporter(
        run_id, settings=settings, spool_dir=spool, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=heartbeat_s
    )


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _every_seq_arrived(settings: Settings, run_id: str, steps: int, stats: dict[str, int]) -> None:
    events = consume(settings, finished(run_id, 1), timeout=120)
    missing, _duplicates = seq_problems(events, run_id)[0]  # duplicates are allowed (and detectable)
    assert missing == []
    assert {e["step"] for e in events if e["kind"] == "step"} == set(range(steps))
    assert max(e["seq"] for e in events) == stats["enqueued"] - 1


def test_broker_restart_mid_run_loses_nothing(private_broker: Settings, tmp_path: Path) -> None:
    reporter = _one_rank(private_broker, tmp_path, "outage-run", heartbeat_s=1.0)
    stop = threading.Event()
    steps = [0]

    def train() -> None:  # a training loop that keeps stepping through the outage
        while not stop.is_set():
            reporter.log(steps[0], loss=1.0 / (steps[0] + 1), lr=1e-3)
            steps[0] += 1
            time.sleep(0.005)

    loop = threading.Thread(target=train)
    loop.start()
    try:
        _wait(lambda: reporter.stats["sent"] > 100, "events delivered before the outage")
        stop_broker(private_broker)
        outage_end = time.monotonic() + OUTAGE_S  # the training loop keeps stepping through it
        _wait(lambda: reporter.stats["spooled"] > 0, "the outage noticed, events spooled")
        while time.monotonic() < outage_end:
            time.sleep(0.2)
        spooled = reporter.stats["spooled"]
        start_broker(private_broker)
        # Reconnected while the job still runs: the backlog is being replayed and new events flow.
        _wait(lambda: reporter.stats["replayed"] > 0, "the spool replayed after the broker came back")
        assert reporter.stats["spooled"] >= spooled
    finally:
        stop.set()
        loop.join()
    reporter.close(timeout=60)
    stats = reporter.stats
    assert stats["spool_pending"] == 0, stats
    assert stats["replayed"] > 0 and stats["connects"] >= 2
    _every_seq_arrived(private_broker, "outage-run", steps[0], stats)


def test_close_reconnects_when_the_broker_returns_after_the_job(private_broker: Settings, tmp_path: Path) -> None:
    """The job ends during an outage; close() keeps reconnecting and delivers the spool once the broker is back."""
    reporter = _one_rank(private_broker, tmp_path, "late-broker-run", heartbeat_s=0)
    reporter.log(0, loss=1.0)
    deadline = time.monotonic() + 30
    while reporter.stats["sent"] < 2 and time.monotonic() < deadline:  # run_start + step 0 acked
        time.sleep(0.05)
    assert reporter.stats["sent"] >= 2, reporter.stats
    stop_broker(private_broker)
    for step in range(1, 300):
        reporter.log(step, loss=1.0 / (step + 1))
    deadline = time.monotonic() + 30
    while reporter.stats["spooled"] == 0 and time.monotonic() < deadline:  # the outage was noticed
        time.sleep(0.05)
    assert reporter.stats["spooled"] > 0, reporter.stats

    restarter = threading.Timer(3.0, start_broker, args=(private_broker,))
    restarter.start()  # the broker returns while close() is already waiting on its reconnect backoff
    try:
        reporter.close(timeout=90)
    finally:
        restarter.join()
    stats = reporter.stats
    assert stats["spool_pending"] == 0, stats
    assert stats["replayed"] > 0, stats

    _every_seq_arrived(private_broker, "late-broker-run", 300, stats)
