"""Reporter behaviour that needs no broker: the hot path never raises, density control, spooling, fork."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import rankstream.producer.kafka_io as kafka_io
from rankstream.config import Settings
from rankstream.producer import Reporter
from rankstream.producer.spool import rank_dir
from rankstream.schema import decode_event


@pytest.fixture
def dead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings pointing at a port nobody listens on; connection attempts give up fast."""
    monkeypatch.setattr(kafka_io, "BOOTSTRAP_TIMEOUT_MS", 300)
    return Settings(bootstrap_servers="127.0.0.1:9", state_dir=str(tmp_path / "state"), topic_prefix="unit")


def _spooled(spool_root: Path, run_id: str, rank: int) -> list[dict]:
    events = []
    for seg in sorted(rank_dir(spool_root, run_id, rank).glob("seg-*.log")):
        events += [decode_event(line) for line in seg.read_bytes().splitlines()]
    return events


def test_bad_input_never_raises_and_is_counted(dead: Settings) -> None:
    r = Reporter("r1", settings=dead, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0)
    r.log("x", loss=1.0)
    r.log(-1, loss=1.0)
    r.log(1, 5)  # metrics is not a mapping
    r.log(2, tags=7)
    r.log(3, loss="abc", ok=1.5)
    r.log_eval("bad")
    r.close(timeout=2)
    stats = r.stats
    assert stats["bad_calls"] == 5
    assert stats["dropped_invalid"] == 1
    events = _spooled(dead.spool_path, "r1", 0)
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == [3]
    assert steps[0]["metrics"] == {"ok": 1.5}


def test_everything_is_spooled_in_seq_order_with_meta_heartbeat_and_run_end(dead: Settings) -> None:
    meta = {"team": "nlp", "config": {"api_key": "sk-abcdefghijklmnopqrst", "lr": 0.1}}
    r = Reporter(
        "r2", settings=dead, meta=meta, rank=1, world_size=2, local_rank=1, max_events_per_s=0, heartbeat_s=0.2
    )
    for step in range(50):
        r.log(step, loss=float(step), tags={"stage": "warmup"})
    time.sleep(0.7)  # a few heartbeats
    r.log_eval(49, eval_loss=0.5)
    r.close(timeout=2, status="failed")
    events = _spooled(dead.spool_path, "r2", 1)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[0]["kind"] == "run_start" and events[0]["meta"]["config"]["api_key"] == "***"
    assert events[0]["meta"]["config"]["lr"] == 0.1
    assert events[-1]["kind"] == "run_end" and events[-1]["step"] == 49
    assert events[-1]["tags"] == {"status": "failed", "reason": "unknown"}
    beats = [e for e in events if e["kind"] == "heartbeat"]
    assert beats and all(e["step"] == 49 for e in beats)
    assert sum(e["kind"] == "step" for e in events) == 50
    assert {e["rank"] for e in events} == {1} and {e["world_size"] for e in events} == {2}
    assert r.stats["spooled"] == len(events) == r.stats["enqueued"]


def test_every_k_and_rate_limit(dead: Settings) -> None:
    """every_k first, then a stride by step number (here 100 steps/s on a fake clock: 50 reported/s, limit 5/s)."""
    r = Reporter("r3", settings=dead, rank=0, world_size=1, every_k=2, max_events_per_s=5, heartbeat_s=0)
    now = [0.0]
    assert r._stride is not None
    r._stride.clock = lambda: now[0]
    for step in range(2000):
        now[0] = step / 100.0
        r.log(step, loss=1.0)
    stats = r.stats
    assert stats["skipped_every_k"] == 1000
    assert stats["rate_stride"] == 8  # 50 reported steps/s over 5/s: 10, nearest power of two 8
    # Every reported step until the first decision (64 reported steps), then every 8th reported step.
    expected = [s for s in range(0, 2000, 2) if s // 2 < 64 or (s // 2) % 8 == 0]
    assert stats["rate_limited"] == 1000 - len(expected)
    assert stats["enqueued"] == 1 + len(expected)
    r.close(timeout=1)
    steps = [e["step"] for e in _spooled(dead.spool_path, "r3", 0) if e["kind"] == "step"]
    assert steps == expected


def test_queue_overflow_goes_to_the_spool(dead: Settings) -> None:
    r = Reporter("r4", settings=dead, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0, queue_size=10)
    for step in range(200):
        r.log(step, loss=1.0)
    r.close(timeout=2)
    events = _spooled(dead.spool_path, "r4", 0)
    assert r.stats["overflow_spooled"] > 0
    assert sorted(e["seq"] for e in events) == list(range(202))


def test_forked_child_does_not_report_and_parent_keeps_working(dead: Settings) -> None:
    r = Reporter("r5", settings=dead, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0)
    r.log(0, loss=1.0)
    pid = os.fork()
    if pid == 0:
        r.log(1, loss=2.0)  # must be a no-op in the child
        ok = r.stats["forked_calls"] == 1 and len(r._queue) == 0 and r._sender._thread is None
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    r.log(2, loss=3.0)
    r.close(timeout=2)
    steps = [e["step"] for e in _spooled(dead.spool_path, "r5", 0) if e["kind"] == "step"]
    assert steps == [0, 2]


def test_close_is_bounded_and_idempotent_and_log_after_close_is_ignored(dead: Settings) -> None:
    with Reporter("r6", settings=dead, rank=0, world_size=1, heartbeat_s=0) as r:
        r.log(0, loss=1.0)
    r.close()
    r.log(1, loss=1.0)
    assert r.stats["enqueued"] == 3


def test_close_keeps_reconnecting_until_its_deadline(dead: Settings) -> None:
    """A reconnect waiting on its backoff is no reason to stop: close() tries until the timeout is spent."""
    r = Reporter("r-close", settings=dead, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0)
    for step in range(20):
        r.log(step, loss=1.0)
    time.sleep(0.5)  # the first connect attempt fails and schedules a retry
    before = r.stats["connect_attempts"]
    started = time.monotonic()
    r.close(timeout=8)
    elapsed = time.monotonic() - started
    stats = r.stats
    # Attempts 0.3 s long, backoff 0.5 s doubling: a few fit into 8 s, the last one ends > 3 s in.
    assert stats["connect_attempts"] >= before + 2, stats  # it kept trying while closing
    assert elapsed >= 3.0, elapsed  # and did not give up at once (it used to return in ~0.02 s)
    assert elapsed <= 8 + 2.5, elapsed  # but respects its timeout
    assert stats["spool_pending"] == 20 + 2  # run_start + 20 steps + run_end, nothing lost
