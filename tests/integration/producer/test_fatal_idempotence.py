"""The broker restarts with its data wiped: the idempotent producer's state is gone, nothing is lost.

A wiped broker (new cluster id, no producer state, topics created again) is
the case the issue calls "UnknownProducerId after a broker restart". What
kafka-python 3.0.12 against this Kafka 4.x broker actually does:

* an old producer id the new broker has never seen is *accepted* with any
  sequence number (KIP-360 brokers no longer answer UNKNOWN_PRODUCER_ID for
  missing producer state), so an idle producer simply carries on;
* but the new broker hands out producer ids from 0 again: once another
  producer got the recycled id and wrote to the same partition, the old
  producer's next batch fails with ``OutOfOrderSequenceNumberError`` (error
  45) on its future; kafka-python bumps the epoch (KIP-360) instead of
  entering a fatal state, and the failed batch is the caller's to resend;
* a producer that was sending while the broker was away stalls first and is
  recreated before the new broker is up.

Each test asserts the guarantee (every seq of the run arrives; repeats are
allowed) and that the reporter closed and recreated its producer. Events
acknowledged before the wipe are read from the old broker before it stops:
wiping acknowledged data is a loss no producer can prevent.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.dev.stack import start_broker, stop_broker
from rankstream.kafka_admin import ensure_topics
from rankstream.producer import Reporter
from tests.integration.producer.support import consume, finished, seq_problems

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RESERVED_PORTS = {9092, 9093, 19092, 19093, 19592, 19593}
STALL_WAIT_S = 15.0  # the reporter notices a dead broker after STALL_S (5 s) without acks


def _free_port_pair() -> int:
    """A free port p with p + 1 free too (broker and controller listeners)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535 or {port, port + 1} & RESERVED_PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports")


@pytest.fixture(scope="module")
def wiped_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A private broker for this module (each test wipes and restarts it)."""
    port = _free_port_pair()
    settings = Settings(
        state_dir=str(tmp_path_factory.mktemp("wiped") / "broker"),
        kafka_port=port,
        kafka_controller_port=port + 1,
        bootstrap_servers=f"127.0.0.1:{port}",
        partitions=1,
    )
    start_broker(settings)
    try:
        yield settings
    finally:
        stop_broker(settings)


def _restart_wiped(settings: Settings) -> None:
    """Start the broker again with empty storage: a new cluster with no producer state and no topics."""
    stop_broker(settings)
    shutil.rmtree(settings.state_path / "kafka" / "data")
    start_broker(settings)
    ensure_topics(settings)


class Trainer:
    """A training loop on its own thread that logs every 5 ms while ``running`` is set."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.running = threading.Event()
        self.steps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.running.wait(0.05):
                self.reporter.log(self.steps, loss=1.0 / (self.steps + 1), lr=1e-3)
                self.steps += 1
                time.sleep(0.005)

    def start(self) -> None:
        self.running.set()
        self._thread.start()

    def pause_until_acked(self, timeout: float = 20.0) -> None:
        """Stop logging and wait until Kafka acknowledged every event enqueued so far."""
        self.running.clear()
        time.sleep(0.05)  # a log() call in progress lands before the count is read
        deadline = time.monotonic() + timeout
        while self.reporter.stats["sent"] < self.reporter.stats["enqueued"]:
            assert time.monotonic() < deadline, self.reporter.stats
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _reporter(settings: Settings, run_id: str, spool: Path) -> Reporter:
    return Reporter(run_id, settings=settings, spool_dir=spool, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0)


def _read_before_wipe(settings: Settings, run_id: str, enqueued: int) -> list[dict]:
    """Every event of the run the old broker holds (all were acknowledged, so all are there)."""

    def done(events: list[dict]) -> bool:
        return {e["seq"] for e in events if e["run_id"] == run_id} >= set(range(enqueued))

    events = consume(settings, done, timeout=30)
    assert done(events), f"the old broker lacks acknowledged events of {run_id}"
    return events


def _read_after_wipe(settings: Settings, run_id: str, before: list[dict]) -> list[dict]:
    """The whole run: what the old broker held plus what reached the new one (until run_end, no gaps)."""
    complete = finished(run_id, 1)
    return before + consume(settings, lambda events: complete(before + events), timeout=30)


def _assert_complete(events: list[dict], run_id: str, reporter: Reporter, steps: int) -> None:
    stats = reporter.stats
    assert stats["spool_pending"] == 0, stats
    missing, _duplicates = seq_problems(events, run_id)[0]  # duplicates are allowed (and detectable)
    assert missing == [], f"{len(missing)} seqs lost, first {missing[:10]}; {stats}"
    assert max(e["seq"] for e in events if e["run_id"] == run_id) == stats["enqueued"] - 1
    assert {e["step"] for e in events if e["run_id"] == run_id and e["kind"] == "step"} == set(range(steps))


def _producer_id(reporter: Reporter) -> object:
    """kafka-python's (producer id, epoch) of the reporter's live producer, for failure messages only."""
    producer = reporter._sender._producer
    manager = getattr(producer, "_transaction_manager", None)
    return getattr(manager, "producer_id_and_epoch", None)


def test_recycled_producer_id_after_wipe_is_recovered(
    wiped_broker: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Idle across the wiped restart, then another producer takes the recycled id: the old producer's
    next batch fails (OutOfOrderSequenceNumberError), the reporter recreates it and resends."""
    settings = wiped_broker.with_overrides(topic_prefix="recycled")
    ensure_topics(settings)
    caplog.set_level(logging.WARNING, logger="rankstream.producer")
    run_id = "recycled-run"
    reporter = _reporter(settings, run_id, tmp_path / "spool")  # the first producer of this cluster: id 0
    trainer = Trainer(reporter)
    trainer.start()
    try:
        time.sleep(1.5)
        trainer.pause_until_acked()  # e.g. an evaluation phase: nothing in flight during the restart
        before = _read_before_wipe(settings, run_id, reporter.stats["enqueued"])
        old_id = _producer_id(reporter)

        _restart_wiped(settings)
        # Another job starts on the new cluster first: it gets producer id 0 again and writes seq 0.. to
        # the same partition (one partition here; with more, any run whose key hashes there).
        other = _reporter(settings, "other-run", tmp_path / "other-spool")
        for step in range(20):
            other.log(step, loss=0.5)
        other.close(timeout=20)
        assert other.stats["spool_pending"] == 0, other.stats
        assert reporter.stats["send_failures"] == 0, reporter.stats  # the idle producer noticed nothing

        trainer.running.set()  # resume: the next batch carries the old id with a high sequence number
        time.sleep(2.0)
    finally:
        trainer.stop()
    reporter.close(timeout=30)

    stats = reporter.stats
    reasons = [r.getMessage() for r in caplog.records if f"{run_id}/rank-0" in r.getMessage()]
    assert stats["producer_recreated"] >= 1 and stats["send_failures"] >= 1, (stats, old_id, reasons)
    assert any("OutOfOrderSequenceNumber" in r or "UnknownProducerId" in r for r in reasons), reasons
    _assert_complete(_read_after_wipe(settings, run_id, before), run_id, reporter, trainer.steps)


def test_logging_through_wiped_restart_loses_nothing(wiped_broker: Settings, tmp_path: Path) -> None:
    """Logging never stops: the broker goes away, comes back wiped, and the run arrives without gaps."""
    settings = wiped_broker.with_overrides(topic_prefix="busy")
    ensure_topics(settings)
    run_id = "busy-run"
    reporter = _reporter(settings, run_id, tmp_path / "spool")
    trainer = Trainer(reporter)
    trainer.start()
    try:
        time.sleep(1.5)
        # Read what the old broker acknowledged (it is wiped below), then stop it and log on.
        trainer.pause_until_acked()
        before = _read_before_wipe(settings, run_id, reporter.stats["enqueued"])
        stop_broker(settings)
        trainer.running.set()
        deadline = time.monotonic() + STALL_WAIT_S
        while reporter.stats["send_failures"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert reporter.stats["spooled"] > 0, reporter.stats  # the outage was noticed: events went to disk
        _restart_wiped(settings)
        time.sleep(2.0)
    finally:
        trainer.stop()
    reporter.close(timeout=30)

    stats = reporter.stats
    assert stats["producer_recreated"] >= 1 and stats["replayed"] > 0, stats
    _assert_complete(_read_after_wipe(settings, run_id, before), run_id, reporter, trainer.steps)
