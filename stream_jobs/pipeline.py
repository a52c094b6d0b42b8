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

Memory stays flat however many runs a worker has seen: when the engine evicts a
run (ended, or silent for the retention), everything kept here for it goes too
(held offsets are acked, released step numbers forgotten) and the result carries
a tombstone for its saved detector state, so the next owner of the partition does
not read it back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rankstream.kafka_access import claim_team
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
    #: (partition, run_id) of runs evicted, whose saved state is deleted (a tombstone); never also in ``state``.
    evicted: set[tuple[int, str]] = field(default_factory=set)
    ackable: list[PartitionOffset] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.steps or self.alerts or self.dlq or self.state or self.evicted or self.ackable)


#: Messages held for one aligned step: (wall time held since, where the message sits).
_Held = list[tuple[float, PartitionOffset]]


@dataclass
class _PartitionState:
    engine: Engine
    #: run_id -> (attempt, step) -> messages waiting for that aligned step.
    held: dict[str, dict[tuple[int, int], _Held]] = field(default_factory=dict)
    #: run_id -> (attempt, step) released, to recognise late events.
    released: dict[str, set[tuple[int, int]]] = field(default_factory=dict)


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
        team: str = "",
    ) -> None:
        self._rules = rules
        self._source_topic = source_topic
        self._team = team  # RANKSTREAM_TEAM: the team of every run, whatever run_start claims
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
            "team_corrected": 0,
        }

    # ----------------------------------------------------------------- partitions

    def _partition(self, partition: int) -> _PartitionState:
        state = self._partitions.get(partition)
        if state is None:
            engine = Engine(self._rules, trust_first_seq=True, report_evictions=True)
            state = self._partitions[partition] = _PartitionState(engine)
        return state

    def revoke(self, partitions: Iterable[int]) -> None:
        """Forget revoked partitions: their held messages stay uncommitted for the next owner."""
        for p in partitions:
            self._partitions.pop(p, None)

    def held_count(self) -> int:
        return sum(len(v) for ps in self._partitions.values() for run in ps.held.values() for v in run.values())

    def run_labels(self, run_id: str) -> tuple[str, str] | None:
        """``(run_name, team)`` of a run held by any partition's engine (for the metrics board)."""
        for ps in self._partitions.values():
            labels = ps.engine.labels(run_id)
            if labels is not None:
                return labels
        return None

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
        steps, alerts, ackable = result.steps, result.alerts, result.ackable
        stats = self.stats
        partitions = self._partitions
        team = self._team
        now_wall = self._wall()
        dirty: set[tuple[int, str]] = set()
        for item in items:  # once per consumed message: locals instead of attribute and method lookups
            partition = item.partition
            if item.headers and _sink_only(item.headers):  # re-sent for the sink; aligned long ago
                stats["sink_only"] += 1
                ackable.append((partition, item.offset))
                continue
            try:
                event = decode_event(item.value)
            except InvalidEvent as exc:
                stats["invalid"] += 1
                result.dlq.append(
                    (item.key, dlq_record(item.value, exc.reason, self._source_topic, partition, item.offset))
                )
                ackable.append((partition, item.offset))
                continue
            stats["events"] += 1
            if team and claim_team(event, team) is not None:
                stats["team_corrected"] += 1
            ps = partitions.get(partition) or self._partition(partition)
            engine = ps.engine
            run_id = event["run_id"]
            if not engine.has_run(run_id):
                self._restore(partition, ps, run_id)
            engine_stats = engine.stats
            not_pending_before = _not_pending(engine_stats)
            n_steps, n_alerts = len(steps), len(alerts)
            engine.process_into(event, steps, alerts, arrival=now_wall)
            ack = (partition, item.offset)
            if event["kind"] == "step":
                key = (engine.attempt(run_id), event["step"])
                if _not_pending(engine_stats) > not_pending_before or key in ps.released.get(run_id, ()):
                    # a duplicate, late for a step released earlier, or a straggler of an evicted run:
                    # nothing pending depends on it
                    ackable.append(ack)
                else:
                    run_held = ps.held.get(run_id)
                    if run_held is None:
                        run_held = ps.held[run_id] = {}
                    waiting = run_held.get(key)
                    if waiting is None:
                        run_held[key] = [(now_wall, ack)]
                    else:
                        waiting.append((now_wall, ack))
            else:
                ackable.append(ack)
            if len(steps) > n_steps or len(alerts) > n_alerts:
                self._collect(partition, ps, steps[n_steps:], alerts[n_alerts:], result, dirty)
            if engine.evicted:  # after _collect: the steps flushed at eviction are released first
                self._forget(partition, ps, result)
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
            alerts = out.all_alerts()
            result.steps.extend(out.steps)
            result.alerts.extend(alerts)
            self._collect(partition, ps, out.steps, alerts, result, dirty)
            if ps.engine.evicted:
                self._forget(partition, ps, result)
            self._force_old(ps, now_wall, result)
        self._finish(result, dirty)
        return result

    # -------------------------------------------------------------------- helpers

    def _restore(self, partition: int, ps: _PartitionState, run_id: str) -> None:
        """Load the saved state of a run the engine does not hold (not for an evicted run: its state is stale)."""
        if self._state_lookup is None or ps.engine.was_evicted(run_id):
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
            run_held = ps.held.get(run_id)
            if run_held:
                for _, ack in run_held.pop((attempt, number), ()):
                    result.ackable.append(ack)
            dirty.add((partition, run_id))
        for alert in alerts:
            dirty.add((partition, alert["run_id"]))

    def _forget(self, partition: int, ps: _PartitionState, result: Result) -> None:
        """Drop what is kept for the runs the engine evicted: their held messages are acked (whatever
        they fed went out with the eviction's flush, or never will), their saved state gets a tombstone."""
        for run_id in ps.engine.take_evicted():
            ps.released.pop(run_id, None)
            for messages in ps.held.pop(run_id, {}).values():
                result.ackable.extend(ack for _, ack in messages)
            result.evicted.add((partition, run_id))

    def _force_old(self, ps: _PartitionState, now_wall: float, result: Result) -> None:
        cutoff = now_wall - self._max_hold_s
        for run_held in ps.held.values():
            for key in [k for k, v in run_held.items() if v and v[0][0] < cutoff]:
                for _, ack in run_held.pop(key):
                    result.ackable.append(ack)
                    self.stats["forced_acks"] += 1

    def _finish(self, result: Result, dirty: set[tuple[int, str]]) -> None:
        for partition, run_id in dirty:
            ps = self._partitions.get(partition)
            if ps is not None and ps.engine.has_run(run_id):
                result.state[(partition, run_id)] = ps.engine.export_state(run_id)
        # a run evicted and relaunched within the batch is live: its new state replaces the old one
        for key in [k for k in result.evicted if k in result.state]:
            result.evicted.discard(key)
        self.stats["steps"] += len(result.steps)
        self.stats["alerts"] += len(result.alerts)


def _sink_only(headers: Sequence[tuple[str, bytes]]) -> bool:
    """Whether a message carries :data:`~rankstream.topics.SINK_ONLY_HEADER` (``rankstream dlq --redrive``)."""
    return any(name == SINK_ONLY_HEADER for name, _ in headers)


__all__ = ["ConsumedMessage", "PartitionOffset", "PartitionedPipeline", "Result", "SimpleMessage"]
