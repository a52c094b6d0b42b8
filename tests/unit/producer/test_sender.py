"""The sender's failure paths without a broker: an in-memory transport refuses, fails, stalls and comes back.

Every test counts every seq: what the fake broker acknowledged plus what is
left in the spool must be the whole run (run_start, the steps, run_end).
Waits poll observable state against a deadline; nothing sleeps to synchronize.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import rankstream.producer.sender as sender_module
from rankstream.config import Settings
from rankstream.producer import Reporter
from rankstream.producer.sender import Connection, Lifecycle
from rankstream.producer.spool import rank_dir
from rankstream.schema import decode_event

WAIT_S = 10.0


class OutOfOrderSequenceNumberError(Exception):
    """Stands in for kafka-python's error of a producer whose broker lost its state."""


class FakeFuture:
    def __init__(self) -> None:
        self.is_done = False
        self.exception: BaseException | None = None
        self._done = threading.Event()

    def failed(self) -> bool:
        return self.exception is not None

    def settle(self, exc: BaseException | None = None) -> None:
        self.exception = exc
        self.is_done = True
        self._done.set()


class FakeProducer:
    """Acknowledges at once, unless broken (every send fails) or stalled (no send is ever acknowledged)."""

    def __init__(self, broker: FakeTransport) -> None:
        self.broker = broker
        self.broken = False
        self.raises = False
        self.stalled = False
        self.closed = False
        self.futures: list[FakeFuture] = []

    def send(self, topic: str, value: bytes, key: bytes) -> FakeFuture:
        if self.raises:
            raise OutOfOrderSequenceNumberError("send refused")
        future = FakeFuture()
        self.futures.append(future)
        if self.broken:
            future.settle(OutOfOrderSequenceNumberError("the broker lost this producer's state"))
        elif not self.stalled:
            self.broker.acknowledge(topic, key, value)
            future.settle()
        return future

    def flush(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else WAIT_S)
        for future in list(self.futures):
            future._done.wait(max(deadline - time.monotonic(), 0.0))

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


class FakeTransport:
    """An in-memory broker: ``down`` refuses every connect (until ``back_when()``), ``refusals_left`` the next n."""

    connect_timeout_s = 0.2

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.down = False
        self.back_when: Callable[[], bool] = lambda: False
        self.refusals_left = 0
        self.refused = 0
        self.producers: list[FakeProducer] = []
        self.acked: list[tuple[str, bytes, bytes]] = []

    def connect(self, client_id: str) -> FakeProducer:
        with self.lock:
            if self.down and not self.back_when():
                self.refused += 1
                raise ConnectionRefusedError("broker down")
            if self.refusals_left > 0:
                self.refusals_left -= 1
                self.refused += 1
                raise ConnectionRefusedError("broker starting")
            producer = FakeProducer(self)
            self.producers.append(producer)
            return producer

    def release(self, producer: FakeProducer, timeout: float) -> None:
        producer.close(timeout)

    def acknowledge(self, topic: str, key: bytes, value: bytes) -> None:
        with self.lock:
            self.acked.append((topic, key, value))

    @property
    def current(self) -> FakeProducer:
        return self.producers[-1]

    def seqs(self) -> list[int]:
        with self.lock:
            return [decode_event(value)["seq"] for _, _, value in self.acked]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.005)


def spooled_seqs(settings: Settings, run_id: str) -> list[int]:
    """Seqs of every line in the spool's segments (only meaningful when nothing was acknowledged from it)."""
    seqs = []
    for seg in sorted(rank_dir(settings.spool_path, run_id, 0).glob("seg-*.log")):
        seqs += [decode_event(line)["seq"] for line in seg.read_bytes().splitlines()]
    return seqs


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Short backoff so that reconnects happen within milliseconds."""
    monkeypatch.setattr(sender_module, "BACKOFF_MIN_S", 0.01)
    monkeypatch.setattr(sender_module, "BACKOFF_MAX_S", 0.05)
    return Settings(bootstrap_servers="fake:9092", state_dir=str(tmp_path / "state"), topic_prefix="unit")


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


def reporter(settings: Settings, transport: FakeTransport, run_id: str) -> Reporter:
    return Reporter(
        run_id, settings=settings, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0, transport=transport
    )


def log_steps(r: Reporter, steps: range) -> None:
    for step in steps:
        r.log(step, loss=1.0 / (step + 1))


def test_events_spooled_while_connects_fail_are_replayed_in_order(settings: Settings, transport: FakeTransport) -> None:
    transport.down = True
    r = reporter(settings, transport, "refused")
    log_steps(r, range(30))
    wait_until(lambda: r.stats["spooled"] == 31, "run_start and 30 steps are spooled")
    assert r._sender.connection is Connection.OUTAGE and transport.acked == []

    transport.refusals_left = 3  # the broker answers again, after three more refusals
    transport.down = False
    wait_until(lambda: len(transport.acked) == 31, "the spool is replayed")
    assert r._sender.connection is Connection.CONNECTED
    log_steps(r, range(30, 50))  # sent directly now
    r.close(timeout=5)

    stats = r.stats
    assert transport.seqs() == list(range(52)) == list(range(stats["enqueued"]))  # none lost, none twice, in order
    assert stats["replayed"] == 31 and stats["sent"] == 21 and stats["spool_pending"] == 0, stats
    assert stats["connects"] == 1 and stats["connect_attempts"] == transport.refused + 1, stats
    assert transport.refused >= 4, transport.refused


@pytest.mark.parametrize("how", ["future", "raise"])
def test_failed_send_spools_and_recreates_the_producer(settings: Settings, transport: FakeTransport, how: str) -> None:
    r = reporter(settings, transport, f"failed-{how}")
    log_steps(r, range(10))
    wait_until(lambda: r.stats["sent"] == 11, "the first steps are acknowledged")
    first = transport.current
    if how == "future":
        first.broken = True  # futures fail, like kafka-python's after an OutOfOrderSequenceNumber
    else:
        first.raises = True  # send() itself raises
    log_steps(r, range(10, 40))
    wait_until(lambda: len(set(transport.seqs())) == 41, "every step is acknowledged")
    r.close(timeout=5)

    stats = r.stats
    assert stats["send_failures"] >= 1 and stats["producer_recreated"] >= 1 and stats["spooled"] >= 1, stats
    assert first.closed and transport.current is not first
    assert "OutOfOrderSequenceNumberError" in r._sender.last_error
    seqs = transport.seqs()
    assert sorted(set(seqs)) == list(range(42)) == list(range(stats["enqueued"]))  # none lost
    assert list(dict.fromkeys(seqs)) == list(range(42))  # in order (a resend may repeat what was acked)
    if how == "future":
        assert seqs == list(range(42))  # a failed future was never acknowledged: no duplicates
    assert stats["spool_pending"] == 0


def test_stalled_acks_are_spooled_and_resent(
    settings: Settings, transport: FakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender_module, "STALL_S", 0.3)
    r = reporter(settings, transport, "stalled")
    log_steps(r, range(5))
    wait_until(lambda: r.stats["sent"] == 6, "the first steps are acknowledged")
    stalled = transport.current
    stalled.stalled = True
    log_steps(r, range(5, 25))
    wait_until(lambda: r.stats["send_failures"] == 1, "the stall is noticed")
    assert r.stats["spooled"] >= 20 and "no acknowledgement" in r._sender.last_error
    wait_until(lambda: len(transport.acked) == 26, "the stalled steps are resent")
    r.close(timeout=5)

    stats = r.stats
    assert stalled.closed and stats["producer_recreated"] == 1, stats
    assert transport.seqs() == list(range(27)) == list(range(stats["enqueued"]))
    assert stats["spool_pending"] == 0


def test_close_while_down_retries_until_its_deadline_and_keeps_the_rest(
    settings: Settings, transport: FakeTransport
) -> None:
    transport.down = True
    r = reporter(settings, transport, "down-at-close")
    log_steps(r, range(20))
    wait_until(lambda: r.stats["spooled"] == 21, "the steps are spooled")
    refused_before = transport.refused
    timeout = 2.0
    started = time.monotonic()
    r.close(timeout=timeout)
    elapsed = time.monotonic() - started

    stats = r.stats
    # It retries as long as one more attempt fits before the deadline (attempt + 1 s margin), not longer.
    last_attempt_at = timeout - transport.connect_timeout_s - 1.0
    assert transport.refused >= refused_before + 3, (transport.refused, refused_before)
    assert last_attempt_at - 0.2 <= elapsed <= timeout + 1.0, elapsed
    assert r._sender.lifecycle is Lifecycle.CLOSING
    assert transport.acked == [] and stats["spool_pending"] == 22, stats
    assert spooled_seqs(settings, "down-at-close") == list(range(22)) == list(range(stats["enqueued"]))


def test_close_delivers_the_spool_when_the_broker_returns(settings: Settings, transport: FakeTransport) -> None:
    transport.down = True
    r = reporter(settings, transport, "back-at-close")
    log_steps(r, range(20))
    wait_until(lambda: r.stats["spooled"] == 21, "the steps are spooled")
    transport.refusals_left = 2  # back once close() started, from its third attempt on
    transport.back_when = lambda: r._sender.lifecycle is not Lifecycle.RUNNING
    refused_before = transport.refused
    started = time.monotonic()
    r.close(timeout=5)
    elapsed = time.monotonic() - started

    stats = r.stats
    assert transport.refused >= refused_before + 2 and transport.refusals_left == 0
    assert transport.seqs() == list(range(22)) == list(range(stats["enqueued"]))
    assert stats["spool_pending"] == 0 and stats["connects"] == 1, stats
    assert elapsed < 5, elapsed  # it returned once everything was delivered


def test_a_dead_runs_orphaned_ranks_are_delivered_merged_by_time(settings: Settings, transport: FakeTransport) -> None:
    from rankstream.producer.events import EventEncoder
    from rankstream.producer.spool import Spool

    lengths = {0: 400, 1: 350, 2: 400}
    for rank, n in lengths.items():  # what three ranks of a dead run left on disk
        spool = Spool(rank_dir(settings.spool_path, "dead-run", rank))
        encoder = EventEncoder("dead-run", rank, 3, rank, inc=f"dead{rank}")
        spool.append([encoder.encode("step", s, 1000.0 + s + rank / 10, s, {"loss": 1.0}) for s in range(n)])
        spool.close(remove_if_empty=False)
    r = reporter(settings, transport, "live-run")
    log_steps(r, range(5))
    wait_until(lambda: r.stats["replayed"] == sum(lengths.values()), "the orphans are delivered")
    r.close(timeout=5)

    with transport.lock:
        dead = [decode_event(value) for _, key, value in transport.acked if key == b"dead-run"]
    assert [e["ts"] for e in dead] == sorted(e["ts"] for e in dead)  # ranks interleaved by time
    for rank, n in lengths.items():
        assert [(e["inc"], e["seq"]) for e in dead if e["rank"] == rank] == [(f"dead{rank}", s) for s in range(n)]
    with transport.lock:
        live = [decode_event(value)["seq"] for _, key, value in transport.acked if key == b"live-run"]
    assert live == list(range(7)) == list(range(r.stats["enqueued"]))  # run_start, 5 steps, run_end
    assert not list((settings.spool_path / "dead-run").rglob("seg-*.log"))
