"""The detection engine: validated events in, aligned steps and alerts out.

Pure and deterministic: no I/O, threads or clock reads. Time is the events'
``ts`` or what the caller passes to :meth:`Engine.advance`. The Faust jobs and
``rankstream replay`` both drive this class.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rankstream.stream_jobs.core.rules import RulesConfig
from rankstream.stream_jobs.core.run import RunState

#: Run ids remembered after eviction, so that stragglers of a finished run are not a new run.
_EVICTED_MEMORY = 4096
#: Event-time seconds between two sweeps for runs to evict.
_SWEEP_EVERY_S = 60.0

STAT_NAMES = (
    "events",
    "duplicates",
    "late_events",
    "after_eviction",
    "steps",
    "partial_steps",
    "alerts",
    "heartbeats",
    "eval_events",
    "evicted_runs",
    "world_size_changes",
    "restarts",
)


@dataclass
class Output:
    """What one call produced: aligned steps and alerts, in contract shape, JSON-ready."""

    steps: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)

    def extend(self, other: Output) -> None:
        self.steps.extend(other.steps)
        self.alerts.extend(other.alerts)


class Engine:
    """Aligns, aggregates and detects over many runs at once; one instance per worker / replay."""

    def __init__(self, rules: RulesConfig | None = None, *, trust_first_seq: bool = False) -> None:
        """``trust_first_seq``: for a consumer resuming mid-log (the stream worker), a rank's
        first seq seen is its floor instead of waiting for earlier seqs that were consumed
        before the restart. Replay reads from the start and keeps the default."""
        self.rules = rules if rules is not None else RulesConfig()
        self.trust_first_seq = trust_first_seq
        self._runs: dict[str, RunState] = {}
        self._evicted: OrderedDict[str, None] = OrderedDict()
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        self._clock = 0.0
        self._last_sweep = 0.0

    # ------------------------------------------------------------------ input

    def process(self, event: dict[str, Any]) -> Output:
        out = Output()
        self.process_into(event, out.steps, out.alerts)
        return out

    def process_many(self, events: Iterable[dict[str, Any]]) -> Output:
        out = Output()
        steps, alerts = out.steps, out.alerts
        for event in events:
            self.process_into(event, steps, alerts)
        return out

    def process_into(self, ev: dict[str, Any], steps: list[dict], alerts: list[dict]) -> None:
        """:meth:`process`, appending to the caller's lists: no ``Output`` per event in hot loops."""
        stats = self.stats
        stats["events"] += 1
        run_id = ev["run_id"]
        run = self._runs.get(run_id)
        if run is None:
            if run_id in self._evicted:
                stats["after_eviction"] += 1
                return
            run = RunState(run_id, ev["world_size"], ev["ts"], self.rules, stats, self.trust_first_seq)
            self._runs[run_id] = run
        n_alerts = len(alerts)
        run.process(ev, steps, alerts)
        stats["alerts"] += len(alerts) - n_alerts
        ts = ev["ts"]
        if ts > self._clock:
            self._clock = ts
            if ts - self._last_sweep >= _SWEEP_EVERY_S:
                self._sweep(steps, alerts)

    def advance(self, now: float) -> Output:
        """Move every run's clock to ``now``: release overdue partial steps, fire silent / hung rules."""
        out = Output()
        if now > self._clock:
            self._clock = now
        for run in list(self._runs.values()):
            run.advance(now, out.steps, out.alerts)
        self._sweep(out.steps, out.alerts)
        self.stats["alerts"] += len(out.alerts)
        return out

    def finish(self) -> Output:
        """End of input: release every pending step; finished runs are evicted."""
        out = Output()
        for run_id, run in list(self._runs.items()):
            run.flush(out.steps, out.alerts)
            if run.ended_at is not None:
                self._evict(run_id)
        self.stats["alerts"] += len(out.alerts)
        return out

    # -------------------------------------------------------------- eviction

    def _sweep(self, steps: list[dict], alerts: list[dict]) -> None:
        self._last_sweep = self._clock
        for run_id, run in list(self._runs.items()):
            if run.ended_at is not None:
                if self._clock - run.ended_at > run.aligner.grace_s():
                    run.flush(steps, alerts)
                    self._evict(run_id)
            elif self._clock - run.last_event_ts > run.alignment.retention_s:
                run.flush(steps, alerts)
                self._evict(run_id)

    def _evict(self, run_id: str) -> None:
        del self._runs[run_id]
        self.stats["evicted_runs"] += 1
        self._evicted[run_id] = None
        if len(self._evicted) > _EVICTED_MEMORY:
            self._evicted.popitem(last=False)

    # ----------------------------------------------------------------- state

    def run_ids(self) -> list[str]:
        return sorted(self._runs)

    def export_state(self, run_id: str) -> dict[str, Any]:
        """Bounded, JSON-serialisable detector state of a run (pending steps are not included:
        they are rebuilt from the events after the last committed offset)."""
        run = self._runs.get(run_id)
        if run is None:
            raise KeyError(f"unknown run {run_id!r}")
        return run.to_state()

    def import_state(self, run_id: str, state: dict[str, Any]) -> None:
        run = self._runs.get(run_id)
        if run is None:
            ws = int(state["aligner"]["world_size"])
            first = float(state["liveness"]["first_ts"])
            run = RunState(run_id, ws, first, self.rules, self.stats, self.trust_first_seq)
            self._runs[run_id] = run
            self._evicted.pop(run_id, None)
        run.load_state(state)
