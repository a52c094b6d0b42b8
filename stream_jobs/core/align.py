"""Per-run step alignment: dedup by (rank, incarnation, seq), group by step, release in step order.

A step is released when every expected rank reported, or as partial once the
event-time watermark passes it (grace period, another rank far ahead, or too
many pending steps). Steps are always released in increasing step order, and
values are aggregated in rank order, so any arrival order within the grace
period gives the same aligned output.

A lost event (a seq that never arrives) holds the steps after it back at most
until the first of them is released by the watermark: then the gap is given up
(counted in ``seq_gaps``) and the steps behind it flow at once again.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from rankstream.schema import SCHEMA_VERSION
from rankstream.stream_jobs.core.aggregate import Window, aggregate
from rankstream.stream_jobs.core.dedup import SeqDedup, dedup_key
from rankstream.stream_jobs.core.global_norms import apply_topology
from rankstream.stream_jobs.core.params import AlignmentParams
from rankstream.stream_jobs.core.revise import Revisions
from rankstream.stream_jobs.core.topology import RunTopology

__all__ = ["Aligner", "PendingStep", "Released", "SeqDedup", "aligned", "dedup_key"]


class PendingStep:
    __slots__ = (
        "anchor",
        "by_rank",
        "record",
        "revisions",
        "seqs",
        "step",
        "topology",
        "ts_first",
        "ts_last",
        "world_size",
    )

    def __init__(
        self, step: int, world_size: int, ts: float, anchor: float | None = None, topology: RunTopology | None = None
    ) -> None:
        self.step = step
        #: The run's declared layout (empty for runs that declare none): how the step is aggregated.
        self.topology = topology
        self.world_size = world_size
        self.ts_first = ts
        self.ts_last = ts
        #: The run's clock when the step was first seen: its grace period counts from here (an event
        #: stamped by a clock far behind, or delivered late, does not make the step old at once).
        self.anchor = ts if anchor is None else max(ts, anchor)
        self.by_rank: dict[int, dict[str, Any]] = {}
        #: (dedup key, seq) of each rank's event, for the settled test.
        self.seqs: list[tuple[Hashable, int]] = []
        #: Once released: the aligned record, and how often late events revised it.
        self.record: dict[str, Any] | None = None
        self.revisions = 0

    def stretch(self, ev: dict[str, Any]) -> None:
        """Widen the step's time span and world size to cover ``ev``."""
        ts = ev["ts"]
        if ts < self.ts_first:
            self.ts_first = ts
        elif ts > self.ts_last:
            self.ts_last = ts
        if ev["world_size"] > self.world_size:
            self.world_size = ev["world_size"]


@dataclass(slots=True)
class Released:
    """An aligned step: the contract record plus the per-rank values detectors need."""

    record: dict[str, Any]
    ranks: list[int]
    metrics: list[dict[str, float]]
    ts: list[float]
    warmup_tag: bool
    has_stage_tag: bool
    #: Per rank (same order as ``ranks``), who does the same work: None when every rank does.
    peers: list[Hashable] | None = None


def aligned(run_id: str, p: PendingStep, attempt: int) -> Released:
    """The aligned step of ``p``: its contract record (aggregated in rank order) and per-rank values."""
    ranks = sorted(p.by_rank)
    events = [p.by_rank[r] for r in ranks]
    per_rank = [e["metrics"] for e in events]
    ts = [e["ts"] for e in events]
    summaries, nonfinite = aggregate(ranks, per_rank)
    ws = p.world_size
    topology = p.topology
    complete = len(ranks) >= ws
    missing = [] if complete else [r for r in range(ws) if r not in p.by_rank]
    warmup_tag = False
    has_stage = False
    for e in events:
        stage = e["tags"].get("stage")
        if stage is not None:
            has_stage = True
            if stage == "warmup":
                warmup_tag = True
                break
    record = {
        "v": SCHEMA_VERSION,
        "run_id": run_id,
        "step": p.step,
        "world_size": ws,
        "ranks_reported": len(ranks),
        "missing_ranks": missing,
        "complete": complete,
        "ts_first": p.ts_first,
        "ts_last": p.ts_last,
        "metrics": summaries,
        "nonfinite": nonfinite,
        "restart": attempt,
    }
    peers = None
    if topology:  # the run declared its parallel layout (contract: run_start topology)
        peers = apply_topology(topology, ranks, per_rank, summaries, nonfinite, record)
    return Released(record, ranks, per_rank, ts, warmup_tag, has_stage, peers)


class Aligner:
    """Pending steps of one run and the event-time watermark that releases them."""

    def __init__(self, run_id: str, world_size: int, alignment: AlignmentParams, dedup: SeqDedup) -> None:
        self.run_id = run_id
        #: Lost seqs given up per rank (see :meth:`SeqDedup.give_up_below`), and in all.
        self.gaps_by_rank: dict[int, int] = {}
        #: The engine's counters (``seq_gaps``), when it shares them.
        self.stats: dict[str, int] | None = None
        #: Partial steps released recently, which late events can still complete.
        self.revisions = Revisions(run_id, alignment.revise_max_events)
        #: The layout the run's ranks declared in run_start (empty: none, today's aggregation).
        self.topology = RunTopology()
        self.dedup = dedup
        self.world_size = world_size
        self.cfg = alignment
        self.pending: dict[int, PendingStep] = {}
        self._heap: list[int] = []
        self.last_released = -1
        self.max_step = -1
        self.clock = 0.0
        self.absent: set[int] = set()
        self.restart = 0
        self.step_times = Window(alignment.median_window)
        self._median = 0.0
        self._grace = self.grace_s()
        self._median_age = 0
        self._prev_release: tuple[int, float] | None = None
        self.released_count = 0
        self.partial_count = 0

    # -------------------------------------------------------------- watermark inputs

    def median_step_time(self) -> float:
        return self._median

    def grace_s(self) -> float:
        return max(self.cfg.grace_min_s, self.cfg.grace_steps * self._median)

    def set_config(self, alignment: AlignmentParams) -> None:
        self.cfg = alignment
        self._grace = self.grace_s()

    def add(self, ev: dict[str, Any], key: Hashable) -> bool:
        """Add a step event (``key``: its :func:`dedup_key`); False when it is late (its step was released)."""
        step = ev["step"]
        if step <= self.last_released:
            return False
        if step > self.max_step:
            self.max_step = step
        p = self.pending.get(step)
        if p is None:
            p = PendingStep(step, ev["world_size"], ev["ts"], self.clock, self.topology)
            self.pending[step] = p
            heapq.heappush(self._heap, step)
        else:  # p.stretch(ev), inlined: once per event
            ts = ev["ts"]
            if ts < p.ts_first:
                p.ts_first = ts
            elif ts > p.ts_last:
                p.ts_last = ts
            if ev["world_size"] > p.world_size:
                p.world_size = ev["world_size"]
        rank = ev["rank"]
        if rank not in p.by_rank:
            p.by_rank[rank] = ev
            p.seqs.append((key, ev["seq"]))
        return True

    def declare(self, ev: dict[str, Any]) -> None:
        """A run_start that carries its rank's ``topology``."""
        self.topology.declare(ev["rank"], ev["topology"])

    # -------------------------------------------------------------------- release

    def drain(self, out: list[Released], force: bool = False) -> None:
        """Release the oldest pending steps for as long as the watermark allows."""
        heap = self._heap
        pending = self.pending
        cfg = self.cfg
        while heap:
            step = heap[0]
            p = pending[step]
            n = len(p.by_rank)
            if n >= p.world_size and self._settled(p):
                pass  # complete, and nothing earlier of its ranks can still arrive
            elif (
                force
                or self.clock - p.anchor > self._grace
                or self.max_step - step >= cfg.max_steps_ahead
                or len(pending) > cfg.max_pending_steps
                or (self.absent and self._absent_cover(p, n))
            ):
                self._give_up_gaps(p)  # released by the watermark: what its ranks still miss is lost
            else:
                return
            heapq.heappop(heap)
            del pending[step]
            out.append(self._release(p))

    def _settled(self, p: PendingStep) -> bool:
        """No earlier event of any reporting rank can still arrive (its seqs below are all seen).

        A rank emits its steps in order, so once every seq before its event for this
        step is in, no earlier step from it is outstanding: releasing now gives the
        same result as any other arrival order.
        """
        next_seq = self.dedup.next_seq
        for key, seq in p.seqs:  # noqa: SIM110 - a plain loop beats all(generator) on this hot path
            if next_seq.get(key, 0) <= seq:
                return False
        return True

    def _give_up_gaps(self, p: PendingStep) -> None:
        """Seqs still missing below the events of a step released without them will not be waited for."""
        dedup = self.dedup
        for rank, ev in p.by_rank.items():
            key = dedup_key(ev)
            nxt = dedup.next_seq.get(key)
            if nxt is not None and nxt <= ev["seq"]:
                missing = dedup.give_up_below(key, ev["seq"])
                if missing:
                    self.gaps_by_rank[rank] = self.gaps_by_rank.get(rank, 0) + missing
                    if self.stats is not None:
                        self.stats["seq_gaps"] += missing

    def _absent_cover(self, p: PendingStep, n: int) -> bool:
        missing_absent = sum(1 for r in self.absent if r < p.world_size and r not in p.by_rank)
        return n + missing_absent >= p.world_size

    def flush(self, out: list[Released]) -> None:
        self.drain(out, force=True)
        self.revisions.publish_due(self.clock, 0.0, force=True)

    def late(self, ev: dict[str, Any], key: Hashable) -> dict[str, Any] | None:
        """A step event for a released step: merged into it when it is still kept (its revision is
        published once complete, or one grace period after the last late event); returns the released
        step's record (None when it is no longer kept or the rank was in it)."""
        return self.revisions.merge(ev, key, self.clock)

    def publish_revisions(self) -> list[dict[str, Any]]:
        """Revised records due now (complete, or a grace period after their last late event)."""
        self.revisions.publish_due(self.clock, self._grace)
        return self.revisions.take()

    def _release(self, p: PendingStep) -> Released:
        rel = aligned(self.run_id, p, self.restart)
        record = rel.record
        self.last_released = p.step
        self.released_count += 1
        if not record["complete"]:
            self.partial_count += 1
            self.revisions.keep(p, record)
        self._observe_step_time(p.step, p.ts_first, record["metrics"].get("step_time_s"))
        return rel

    def _observe_step_time(self, step: int, ts_first: float, step_time: dict[str, Any] | None) -> None:
        value = None
        if step_time is not None:
            value = step_time["mean"]
        elif self._prev_release is not None:
            prev_step, prev_ts = self._prev_release
            if step > prev_step and ts_first > prev_ts:
                value = (ts_first - prev_ts) / (step - prev_step)
        self._prev_release = (step, ts_first)
        if value is not None and value > 0:
            self.step_times.add(value)
            self._median_age += 1
            if self._median_age >= 16 or len(self.step_times) <= 16:
                self._median = self.step_times.median()
                self._grace = self.grace_s()
                self._median_age = 0

    # ------------------------------------------------------------------- restarts

    def restart_from(self, step: int, out: list[Released]) -> None:
        """A checkpoint restart: release what is pending, then accept steps from ``step`` again."""
        self.flush(out)
        self.revisions.forget()  # late events of the old attempt are stale from now on
        self.restart += 1
        self.last_released = min(self.last_released, step - 1)
        self.max_step = step
        self._prev_release = None

    # ---------------------------------------------------------------------- state

    def to_state(self) -> dict[str, Any]:
        state = self._state()
        if self.topology:
            state["topology"] = self.topology.to_state()
        return state

    def _state(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "last_released": self.last_released,
            "max_step": self.max_step,
            "clock": self.clock,
            "restart": self.restart,
            "step_times": self.step_times.to_list(),
            "gaps": {str(rank): n for rank, n in self.gaps_by_rank.items()},
            "revisable": self.revisions.to_state(),
            "lost_seqs": [
                [key, None, lo, hi] if type(key) is int else [key[0], key[1], lo, hi]
                for key, ranges in self.dedup.gaps.items()
                for lo, hi in ranges
            ],
            "handled_seq": [
                [key, None, seq] if type(key) is int else [key[0], key[1], seq]
                for key, seq in self.handled_seqs().items()
            ],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.world_size = int(state.get("world_size", self.world_size))
        self.last_released = int(state.get("last_released", -1))
        self.max_step = max(self.max_step, int(state.get("max_step", -1)))
        self.clock = max(self.clock, float(state.get("clock", 0.0)))
        self.restart = int(state.get("restart", 0))
        self.step_times = Window(self.cfg.median_window, state.get("step_times", []))
        self._median = self.step_times.median() if len(self.step_times) else 0.0
        self._grace = self.grace_s()
        self.gaps_by_rank = {int(rank): int(n) for rank, n in state.get("gaps", {}).items()}
        self.topology.load_state(state.get("topology"))
        self.revisions.load_state(state.get("revisable", []), self.clock, self.topology)
        for rank, gen, lo, hi in state.get("lost_seqs", []):
            ranges = self.dedup.gaps.setdefault(rank if gen is None else (rank, gen), [])
            if (lo, hi) not in ranges:
                ranges.append((lo, hi))
        handled = self.dedup.handled
        for rank, gen, seq in state.get("handled_seq", []):
            key = rank if gen is None else (rank, gen)
            handled[key] = max(seq, handled.get(key, -1))

    def handled_seqs(self) -> dict[Any, int]:
        """Per rank (dedup key), the highest seq up to which every event seen is done with: not
        waiting in a pending step. Saved with the state: a log consumer taking the run over
        re-reads such events from its committed offset and must count them as duplicates, not
        as late arrivals (which rank_lagging reports). Computed here, when state is exported,
        so the per-event path pays nothing."""
        dedup = self.dedup
        out = dict(dedup.handled)
        ahead = dedup.ahead
        for key, nxt in dedup.next_seq.items():
            top = nxt - 1
            above = ahead.get(key)
            if above:
                top = max(top, max(above))
            if top > out.get(key, -1):
                out[key] = top
        for p in self.pending.values():
            for ev in p.by_rank.values():
                key = dedup_key(ev)
                if ev["seq"] <= out.get(key, -1):
                    out[key] = ev["seq"] - 1
        return out
