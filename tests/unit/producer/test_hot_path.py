"""log() never waits: a full queue, a stuck spool or a locked spool directory never reach the training thread.

Every test counts every seq (spooled or acknowledged); waits poll observable state under a deadline.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from rankstream.config import Settings
from rankstream.producer import Reporter
from rankstream.producer.events import EventEncoder
from rankstream.producer.spool import Spool, rank_dir
from rankstream.schema import decode_event
from tests.unit.producer.test_sender import FakeTransport, wait_until


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(bootstrap_servers="fake:9092", state_dir=str(tmp_path / "state"), topic_prefix="unit")


def _spooled(directory: Path) -> list[dict]:
    return [decode_event(line) for seg in sorted(directory.glob("seg-*.log")) for line in seg.read_bytes().splitlines()]


class Metric:
    """A value whose conversion records the thread that read it (as a CUDA tensor's read would sync it)."""

    readers: ClassVar[set[str]] = set()

    def __init__(self, value: float) -> None:
        self.value = value

    def __float__(self) -> float:
        Metric.readers.add(threading.current_thread().name)
        return self.value


def test_a_full_queue_and_a_stuck_spool_never_reach_log(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Broker down, spool writes blocked: log() keeps returning; the sender spools the oldest once it can."""
    transport = FakeTransport()
    transport.down = True
    release = threading.Event()
    real_append = Spool.append
    entered = threading.Event()

    def stuck_append(self: Spool, payloads: list[bytes]) -> None:
        entered.set()
        release.wait(30)
        real_append(self, payloads)

    monkeypatch.setattr(Spool, "append", stuck_append)
    encoders: set[str] = set()
    real_encode = EventEncoder.encode

    def recording_encode(self: EventEncoder, *args, **kwargs) -> bytes:  # type: ignore[no-untyped-def]
        encoders.add(threading.current_thread().name)
        return real_encode(self, *args, **kwargs)

    monkeypatch.setattr(EventEncoder, "encode", recording_encode)
    Metric.readers = set()
    r = Reporter("stuck", settings=settings, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0,
                 queue_size=10, transport=transport)  # fmt: skip
    r.log(0, loss=Metric(0.0))
    wait_until(entered.is_set, "the sender to block in the spool")
    for step in range(1, 500):
        r.log(step, loss=Metric(float(step)))  # far past queue_size while the sender is stuck
    assert r.stats["queued"] >= 490  # nothing was written or encoded by log() itself
    assert threading.current_thread().name not in encoders | Metric.readers
    release.set()
    wait_until(lambda: r.stats["queued"] == 0, "the sender to catch up")
    r.close(timeout=1)
    stats = r.stats
    assert stats["overflow_spooled"] > 0 and stats["dropped_queue_full"] == 0
    events = _spooled(rank_dir(settings.spool_path, "stuck", 0))
    assert [e["seq"] for e in events] == list(range(502))  # in order: the oldest were spooled first
    assert threading.current_thread().name not in encoders | Metric.readers  # close() ran the sender to its end
    assert Metric.readers == {"rankstream-sender"}


def test_a_stuck_sender_pins_a_bounded_queue_and_counts_the_drops(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rankstream.producer.reporter as reporter_module

    monkeypatch.setattr(reporter_module, "HARD_QUEUE_MIN", 50)
    transport = FakeTransport()
    transport.down = True
    release, entered = threading.Event(), threading.Event()
    real_append = Spool.append

    def stuck_append(self: Spool, payloads: list[bytes]) -> None:
        entered.set()
        release.wait(30)
        real_append(self, payloads)

    monkeypatch.setattr(Spool, "append", stuck_append)
    r = Reporter("hard", settings=settings, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0,
                 queue_size=2, transport=transport)  # fmt: skip
    r.start()
    wait_until(entered.is_set, "the sender to block in the spool with run_start")
    for step in range(200):
        r.log(step, loss=1.0)
    stats = r.stats
    assert stats["queued"] == 50  # the hard limit; the sender holds run_start
    assert stats["dropped_queue_full"] == 200 - 50

    def release_once_run_end_is_queued() -> None:
        wait_until(lambda: bool(r._queue) and r._queue[-1][0] == "run_end", "close() to queue run_end")
        release.set()

    releaser = threading.Thread(target=release_once_run_end_is_queued)
    releaser.start()
    r.close(timeout=2)  # run_end is queued although the queue is at its hard limit
    releaser.join()
    events = _spooled(rank_dir(settings.spool_path, "hard", 0))
    seqs = {e["seq"] for e in events}
    stats = r.stats
    assert events[-1]["kind"] == "run_end"
    # Every seq handed out is either spooled or counted as dropped (a gap downstream).
    assert len(seqs) + stats["dropped_queue_full"] == stats["enqueued"] == 202


def test_a_spool_directory_held_by_another_process_is_not_waited_for(settings: Settings) -> None:
    transport = FakeTransport()
    transport.down = True
    own = rank_dir(settings.spool_path, "twice", 0)
    own.mkdir(parents=True)
    holder = os.open(own / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another live reporter of the same run and rank
    try:
        r = Reporter("twice", settings=settings, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0,
                     transport=transport)  # fmt: skip
        for step in range(20):
            r.log(step, loss=1.0)
        wait_until(lambda: r.stats["spooled"] >= 21, "the sender to spool elsewhere")
        r.close(timeout=0.5)
    finally:
        os.close(holder)
    fallback = own.with_name(f"rank-0-{r.inc}")
    assert [e["seq"] for e in _spooled(fallback)] == list(range(22))
    assert not list(own.glob("seg-*.log"))
