"""Revisable aligned steps: a partial step released without some ranks is completed by their late events.

Why: a rank's events can arrive after its step was released (its producer spooled through a broker
outage, a slow network path): its ``ts`` says it stepped on time, only delivery was late. The step
went out partial; when the missing events come, it is aggregated again over every rank that reported
and published again with the same (run, step, attempt) and ``revision`` n > 0. Detectors saw the step
once and do not run again; the store keeps the version with the most ranks (ReplacingMergeTree on
``ranks_reported``).

Bounded: the partial steps kept hold at most ``revise_max_events`` events per run (oldest steps are
forgotten first; a late event for a forgotten step is only counted as late). The newest of them (at
most ``STATE_EVENTS`` events) are part of the run's saved state, so a worker that takes the run over
(restart, rebalance: e.g. after a broker outage expired its session) can still revise them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from rankstream.schema import encode_metric

if TYPE_CHECKING:
    from rankstream.stream_jobs.core.align import PendingStep
    from rankstream.stream_jobs.core.topology import RunTopology

#: Events of kept partial steps saved with the run's state (newest steps first): ~100 B a metric value.
STATE_EVENTS = 256


class Revisions:
    """Recently released partial steps of one run, late events merged into them, revised records out."""

    __slots__ = ("_dirty", "_events", "_kept", "_max_events", "_outbox", "active", "run_id")

    def __init__(self, run_id: str, max_events: int) -> None:
        self.run_id = run_id
        self._max_events = max_events
        self._kept: OrderedDict[int, PendingStep] = OrderedDict()
        self._events = 0
        #: step -> event time of the last late event merged into it (revision not yet published).
        self._dirty: dict[int, float] = {}
        self._outbox: list[dict[str, Any]] = []
        #: Revisions are waiting or ready (the per-event path checks this plain attribute only).
        self.active = False

    def keep(self, p: PendingStep, record: dict[str, Any]) -> None:
        """Remember a step just released partial."""
        if self._max_events <= 0:
            return
        p.record = record
        self._kept[p.step] = p
        self._events += len(p.by_rank)
        while self._events > self._max_events and self._kept:
            step, old = self._kept.popitem(last=False)
            self._events -= len(old.by_rank)
            if step in self._dirty:
                self._publish(old)

    def merge(self, ev: dict[str, Any], key: Hashable, clock: float) -> dict[str, Any] | None:
        """Add a late event to its kept step; the step's record, or None when nothing was merged."""
        p = self._kept.get(ev["step"])
        rank = ev["rank"]
        if p is None or rank in p.by_rank:
            return None
        p.by_rank[rank] = ev
        p.seqs.append((key, ev["seq"]))
        self._events += 1
        p.stretch(ev)
        if len(p.by_rank) >= p.world_size:
            self._publish(p)
            del self._kept[p.step]
            self._events -= len(p.by_rank)
        else:
            self._dirty[p.step] = clock
            self.active = True
        return p.record

    def publish_due(self, clock: float, grace: float, force: bool = False) -> None:
        """Publish the revisions whose last late event is a grace period old (all when ``force``)."""
        if not self._dirty:
            return
        for step, since in list(self._dirty.items()):
            if force or clock - since > grace:
                p = self._kept.get(step)
                if p is not None:
                    self._publish(p)
                else:
                    del self._dirty[step]

    def take(self) -> list[dict[str, Any]]:
        """The revised records published since the last call."""
        out, self._outbox = self._outbox, []
        self.active = bool(self._dirty)
        return out

    def forget(self) -> None:
        """A new attempt began: the old attempt's steps are no longer revised (pending revisions go out)."""
        self.publish_due(0.0, 0.0, force=True)
        self._kept.clear()
        self._events = 0

    def to_state(self) -> list[dict[str, Any]]:
        """The newest kept steps, at most ``STATE_EVENTS`` events, JSON-ready (non-finite values as strings)."""
        out: list[dict[str, Any]] = []
        budget = STATE_EVENTS
        for p in reversed(self._kept.values()):
            if len(p.by_rank) > budget:
                break
            budget -= len(p.by_rank)
            record = p.record or {}
            out.append(
                {
                    "step": p.step,
                    "world_size": p.world_size,
                    "ts": [p.ts_first, p.ts_last, p.anchor],
                    "restart": record.get("restart", 0),
                    "warmup": record.get("warmup", False),
                    "revisions": p.revisions,
                    "dirty": p.step in self._dirty,
                    "ranks": [
                        [
                            rank,
                            ev["ts"],
                            ev["seq"],
                            {k: encode_metric(v) for k, v in ev["metrics"].items()},
                            (ev["tags"] or {}).get("stage"),
                        ]
                        for rank, ev in p.by_rank.items()
                    ],
                }
            )
        return out[::-1]

    def load_state(self, saved: list[dict[str, Any]], clock: float, topology: RunTopology | None = None) -> None:
        """Kept steps from saved state (a run taken over); a revision pending there is due a grace from now."""
        from rankstream.stream_jobs.core.align import PendingStep

        for s in saved:
            ts_first, ts_last, anchor = (float(v) for v in s["ts"])
            p = PendingStep(int(s["step"]), int(s["world_size"]), ts_first, anchor, topology)
            p.ts_last = ts_last
            p.revisions = int(s.get("revisions", 0))
            p.record = {"restart": int(s.get("restart", 0)), "warmup": bool(s.get("warmup")), "ts_first": ts_first}
            for rank, ts, seq, metrics, stage in s["ranks"]:
                p.by_rank[int(rank)] = {
                    "rank": int(rank),
                    "ts": float(ts),
                    "seq": int(seq),
                    "metrics": {k: float(v) for k, v in metrics.items()},
                    "tags": {"stage": stage} if stage else {},
                    "world_size": p.world_size,
                    "step": p.step,
                }
            if p.step not in self._kept:
                self._kept[p.step] = p
                self._events += len(p.by_rank)
                if s.get("dirty"):
                    self._dirty[p.step] = clock
                    self.active = True

    def _publish(self, p: PendingStep) -> None:
        from rankstream.stream_jobs.core.align import aligned

        self._dirty.pop(p.step, None)
        original = p.record or {}
        record = aligned(self.run_id, p, original.get("restart", 0)).record
        p.revisions += 1
        record["warmup"] = original.get("warmup", False)
        record["revision"] = p.revisions
        self._outbox.append(record)
        self.active = True
