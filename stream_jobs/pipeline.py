"""The stream job's bookkeeping around the pure core, with no Faust and no Kafka I/O.

One :class:`~rankstream.stream_jobs.core.Engine` per input partition (a run's
events all live in one partition, keyed by run_id), so a revoked partition is
dropped whole and rebuilt by whoever takes it over.

Offsets follow the data: every consumed message is held (its partition and
offset) until everything it contributed to has been produced. A step event is held
until its aligned step is released; other events until the batch's outputs are
produced. The shell acks the returned offsets only after Kafka acknowledged the
outputs, so the committed offset never passes an event whose step is pending,
and a restarted worker re-reads and rebuilds pending alignment from the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rankstream.schema import InvalidEvent, decode_event, dlq_record
from rankstream.stream_jobs.core import Engine, RulesConfig
from rankstream.topics import SINK_ONLY_HEADER

#: A held message older than this (wall seconds) is released even if the core
#: never released its step (e.g. the run was evicted), so offsets cannot stall.
DEFAULT_MAX_HOLD_S = 900.0
#: How many released step numbers are remembered per run to recognise late events.
RELEASED_MEMORY = 4096


def _not_pending(engine_stats: dict[str, int]) -> int:
    """How many events the engine took in without adding them to a pending step."""
    return (
        engine_stats["duplicates"]
        + engine_stats["late_events"]
        + engine_stats["after_eviction"]
        + engine_stats["stale_events"]
    )


class ConsumedMessage(Protocol):
    """One consumed message (aiokafka's ``ConsumerRecord`` is one): where it came from, its bytes."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(slots=True)
class SimpleMessage:
    """A :class:`ConsumedMessage` built by hand (tests, tools)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()


#: Where a consumed message sits, which the shell acks once its outputs are downstream: (partition, offset).
PartitionOffset = tuple[int, int]


@dataclass
class Result:
    """What the shell must produce, then which (partition, offset) pairs it may ack afterwards."""

    steps: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    dlq: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    state: dict[tuple[int, str], dict] = field(default_factory=dict)  # (partition, run_id) -> detector state
    ackable: list[PartitionOffset] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.steps or self.alerts or self.dlq or self.state or self.ackable)


@dataclass
class _PartitionState:
    engine: Engine
    #: (run_id, attempt, step) -> messages waiting for that aligned step.
    held: dict[tuple[str, int, int], list[tuple[float, PartitionOffset]]] = field(default_factory=dict)
    #: run_id -> (attempt, step) released, to recognise late events.
    released: dict[str, set[tuple[int, int]]] = field(default_factory=dict)
    known_runs: set[str] = field(default_factory=set)


class PartitionedPipeline:
    """Decode, route to the partition's engine, hold messages until their outputs exist.

    One core engine per input partition; ``Result.ackable`` says which offsets the shell may ack.
    """

    def __init__(
        self,
        rules: RulesConfig | None = None,
        *,
        source_topic: str = "",
        state_lookup: Callable[[int, str], dict | None] | None = None,
        max_hold_s: float = DEFAULT_MAX_HOLD_S,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._rules = rules
        self._source_topic = source_topic
        self._state_lookup = state_lookup
        self._max_hold_s = max_hold_s
        self._wall = wall_clock
        self._partitions: dict[int, _PartitionState] = {}
        self.stats: dict[str, int] = {
            "events": 0,
            "invalid": 0,
            "steps": 0,
            "alerts": 0,
            "forced_acks": 0,
            "sink_only": 0,
        }

    # ----------------------------------------------------------------- partitions

    def _partition(self, partition: int) -> _PartitionState:
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _PartitionState(Engine(self._rules, trust_first_seq=True))
        return state

    def revoke(self, partitions: Iterable[int]) -> None:
        """Forget revoked partitions: their held messages stay uncommitted for the next owner."""
        for p in partitions:
            self._partitions.pop(p, None)

    def held_count(self) -> int:
        return sum(len(v) for ps in self._partitions.values() for v in ps.held.values())

    def engine_stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for ps in self._partitions.values():
            for k, v in ps.engine.stats.items():
                total[k] = total.get(k, 0) + v
        return total

    # ------------------------------------------------------------------- processing

    def process(self, items: Iterable[ConsumedMessage]) -> Result:
        """Run a batch of consumed messages through the core."""
        result = Result()
        steps, alerts = result.steps, result.alerts
        now_wall = self._wall()
        dirty: set[tuple[int, str]] = set()
        for item in items:
            if item.headers and _sink_only(item.headers):  # re-sent for the sink; aligned long ago
                self.stats["sink_only"] += 1
                result.ackable.append((item.partition, item.offset))
                continue
            try:
                event = decode_event(item.value)
            except InvalidEvent as exc:
                self.stats["invalid"] += 1
                result.dlq.append(
                    (item.key, dlq_record(item.value, exc.reason, self._source_topic, item.partition, item.offset))
                )
                result.ackable.append((item.partition, item.offset))
                continue
            self.stats["events"] += 1
            ps = self._partition(item.partition)
            run_id = event["run_id"]
            if run_id not in ps.known_runs:
                ps.known_runs.add(run_id)
                self._restore(item.partition, ps, run_id)
            engine_stats = ps.engine.stats
            not_pending_before = _not_pending(engine_stats)
            n_steps, n_alerts = len(steps), len(alerts)
            ps.engine.process_into(event, steps, alerts, arrival=now_wall)
            ack = (item.partition, item.offset)
            if event["kind"] == "step":
                key = (ps.engine.attempt(run_id), event["step"])
                if _not_pending(engine_stats) > not_pending_before or key in ps.released.get(run_id, ()):
                    # a duplicate, or late for a step released earlier (possibly by the partition's
                    # previous owner, whose saved state says so): nothing pending depends on it
                    result.ackable.append(ack)
                else:
                    ps.held.setdefault((run_id, *key), []).append((now_wall, ack))
            else:
                result.ackable.append(ack)
            if len(steps) > n_steps or len(alerts) > n_alerts:
                self._collect(item.partition, ps, steps[n_steps:], alerts[n_alerts:], result, dirty)
        self._finish(result, dirty)
        return result

    def advance(self) -> Result:
        """Wall-clock fallback: each run moves on from its newest event by the wall time since the
        worker last heard from it, so partial steps are released and silent / hung / lost rules fire
        even when every rank of a run stopped sending. Per run: producer clock skew stays out."""
        result = Result()
        now_wall = self._wall()
        dirty: set[tuple[int, str]] = set()
        for partition, ps in self._partitions.items():
            out = ps.engine.advance(now_wall)
            result.steps.extend(out.steps)
            result.alerts.extend(out.alerts)
            self._collect(partition, ps, out.steps, out.alerts, result, dirty)
            self._force_old(ps, now_wall, result)
        self._finish(result, dirty)
        return result

    # -------------------------------------------------------------------- helpers

    def _restore(self, partition: int, ps: _PartitionState, run_id: str) -> None:
        if self._state_lookup is None:
            return
        saved = self._state_lookup(partition, run_id)
        if saved:
            ps.engine.import_state(run_id, saved)

    def _collect(
        self,
        partition: int,
        ps: _PartitionState,
        steps: list[dict],
        alerts: list[dict],
        result: Result,
        dirty: set[tuple[int, str]],
    ) -> None:
        """Release the messages held for ``steps`` (already in ``result``) and mark their runs dirty."""
        for step in steps:
            run_id, number, attempt = step["run_id"], step["step"], step.get("restart", 0)
            released = ps.released.setdefault(run_id, set())
            released.add((attempt, number))
            if len(released) > RELEASED_MEMORY:
                released.discard(min(released))
            for _, ack in ps.held.pop((run_id, attempt, number), ()):
                result.ackable.append(ack)
            dirty.add((partition, run_id))
        for alert in alerts:
            dirty.add((partition, alert["run_id"]))

    def _force_old(self, ps: _PartitionState, now_wall: float, result: Result) -> None:
        cutoff = now_wall - self._max_hold_s
        for key in [k for k, v in ps.held.items() if v and v[0][0] < cutoff]:
            for _, ack in ps.held.pop(key):
                result.ackable.append(ack)
                self.stats["forced_acks"] += 1

    def _finish(self, result: Result, dirty: set[tuple[int, str]]) -> None:
        for partition, run_id in dirty:
            ps = self._partitions.get(partition)
            if ps is not None and run_id in ps.engine.run_ids():
                result.state[(partition, run_id)] = ps.engine.export_state(run_id)
        self.stats["steps"] += len(result.steps)
        self.stats["alerts"] += len(result.alerts)


def _sink_only(headers: Sequence[tuple[str, bytes]]) -> bool:
    """Whether a message carries :data:`~rankstream.topics.SINK_ONLY_HEADER` (``rankstream dlq --redrive``)."""
    return any(name == SINK_ONLY_HEADER for name, _ in headers)


__all__ = ["ConsumedMessage", "PartitionOffset", "PartitionedPipeline", "Result", "SimpleMessage"]
