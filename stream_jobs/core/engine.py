"""The detection engine: validated events in, aligned steps and alerts out.

Pure and deterministic: no I/O, threads or clock reads. The Faust jobs and
``rankstream replay`` both drive this class.

Time is per run. Each run is aligned and alerted on its own events' ``ts``; no
run's timestamps move another run's clock. Across runs the engine keeps one
*arrival clock*, used only to tell how long ago a run was last heard from
(eviction, and the silent / hung / lost rules of a run that sends nothing): the
caller's arrival time when it passes one (the worker: its wall clock), else the
events' ``ts`` mapped onto a shared timeline by a per-run offset (zero, unless the
run's clock is more than a minute off the others' when it is first seen, or later
runs ahead of them), so a host whose clock is hours off neither evicts nor ages
the other runs. A run advanced by the arrival clock moves on from its own
newest ``ts`` by the arrival time elapsed since it was last heard from.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rankstream.stream_jobs.core.rules import RulesConfig
from rankstream.stream_jobs.core.run import RunState

#: Run ids remembered after eviction (per engine, oldest forgotten first), so that stragglers of a finished
#: run are not a new run. The only thing an engine keeps of a run after it is evicted.
EVICTED_MEMORY = 4096
#: Arrival-clock seconds between two sweeps for runs to evict.
_SWEEP_EVERY_S = 60.0
#: Arrival-clock seconds between two checks of the runs not heard from (released steps, silent / lost rules).
_IDLE_CHECK_S = 5.0
#: A run whose mapped time runs this far ahead of the arrival clock while other runs are heard from has a
#: clock that jumped (or runs fast): its offset is re-anchored instead of moving everyone's arrival clock.
_MAX_LEAD_S = 60.0

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
    "incarnations",
    "stale_events",
    "seq_gaps",
    "revisions",
)


def _advance_by_arrival(run: RunState, clock: float, steps: list[dict], alerts: list[dict]) -> None:
    """Move ``run`` on from its newest event by the arrival time since it was last heard from."""
    run.advance(run.last_event_ts + max(0.0, clock - run.heard_at), steps, alerts)


@dataclass
class Output:
    """What one call produced: aligned steps and alerts, in contract shape, JSON-ready.

    ``alerts`` are the firing ones; ``resolved`` the ``state: resolved`` records of alerts
    that stopped holding (:mod:`.resolve`). Both go to the alerts topic, in ``all_alerts()`` order.
    """

    steps: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    resolved: list[dict] = field(default_factory=list)

    def extend(self, other: Output) -> None:
        self.steps.extend(other.steps)
        self.alerts.extend(other.alerts)
        self.resolved.extend(other.resolved)

    def split(self) -> Output:
        """Move resolved records that the core appended among the alerts to ``resolved``; returns self."""
        if any(a.get("state") == "resolved" for a in self.alerts):
            self.resolved.extend(a for a in self.alerts if a.get("state") == "resolved")
            self.alerts = [a for a in self.alerts if a.get("state") != "resolved"]
        return self

    def all_alerts(self) -> list[dict]:
        """Firing and resolved records in the order the core made them (by event time)."""
        return sorted(self.alerts + self.resolved, key=lambda a: a["ts"]) if self.resolved else self.alerts


class Engine:
    """Aligns, aggregates and detects over many runs at once; one instance per worker / replay."""

    def __init__(
        self, rules: RulesConfig | None = None, *, trust_first_seq: bool = False, report_evictions: bool = False
    ) -> None:
        """``trust_first_seq``: for a consumer resuming mid-log (the stream worker), a rank's
        first seq seen is its floor instead of waiting for earlier seqs that were consumed
        before the restart. Replay reads from the start and keeps the default.

        ``report_evictions``: evicted run ids are listed in :attr:`evicted` until the caller
        takes them (:meth:`take_evicted`), so that it can drop what it keeps per run (the
        stream worker: held offsets, released steps, the saved state). Off for callers that
        never take them (replay), whose list would only grow."""
        self.rules = rules if rules is not None else RulesConfig()
        self.trust_first_seq = trust_first_seq
        self._report_evictions = report_evictions
        #: Runs evicted since the caller last took them (only with ``report_evictions``), oldest first.
        self.evicted: list[str] = []
        self._runs: dict[str, RunState] = {}
        #: Evicted run -> (attempt, last released step): a relaunch after eviction continues from there.
        self._evicted: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        self._clock = 0.0
        self._last_sweep = 0.0
        self._last_idle_check = 0.0

    # ------------------------------------------------------------------ input

    def process(self, event: dict[str, Any]) -> Output:
        out = Output()
        self.process_into(event, out.steps, out.alerts)
        return out.split()

    def process_many(self, events: Iterable[dict[str, Any]]) -> Output:
        out = Output()
        steps, alerts = out.steps, out.alerts
        for event in events:
            self.process_into(event, steps, alerts)
        return out.split()

    def process_into(
        self, ev: dict[str, Any], steps: list[dict], alerts: list[dict], arrival: float | None = None
    ) -> None:
        """:meth:`process`, appending to the caller's lists: no ``Output`` per event in hot loops.

        ``arrival``: when the caller received the event on its own clock (the worker's wall clock); without
        it the arrival clock follows the events' ``ts`` (replay).
        """
        stats = self.stats
        stats["events"] += 1
        run = self._runs.get(ev["run_id"])
        if run is None:
            run = self._new_run(ev, arrival)
            if run is None:
                stats["after_eviction"] += 1
                return
        n_alerts = len(alerts)
        run.process(ev, steps, alerts, None if arrival is None else arrival - run.offset)
        stats["alerts"] += len(alerts) - n_alerts
        ts = ev["ts"]  # corrected for a skewed host clock
        clock = self._clock
        if arrival is None:
            mapped = ts + run.offset
            if mapped > clock:
                if clock and mapped > clock + _MAX_LEAD_S and self._others_heard(run):
                    run.offset -= mapped - clock
                else:
                    self._clock = clock = mapped
        elif arrival > clock:
            self._clock = clock = arrival
        run.heard_at = clock
        if clock - self._last_idle_check >= _IDLE_CHECK_S:
            self._check_idle(steps, alerts)
        if clock - self._last_sweep >= _SWEEP_EVERY_S:
            self._sweep(steps, alerts)

    def _new_run(self, ev: dict[str, Any], arrival: float | None) -> RunState | None:
        """State for a run seen for the first time, or relaunched after it was evicted; None: ignore the event."""
        run_id = ev["run_id"]
        ts = ev["ts"]
        previous = self._evicted.get(run_id)
        if previous is not None and ev["kind"] != "run_start":
            return None  # a straggler of a run that ended (or was evicted): nothing left to align it with
        run = RunState(run_id, ev["world_size"], ts, self.rules, self.stats, self.trust_first_seq)
        if previous is not None:  # a new launch of a run that had ended: it may repeat steps
            del self._evicted[run_id]
            run.aligner.restart, run.aligner.last_released = previous
            run.expect_relaunch = True
        if arrival is None and self._clock and abs(self._clock - ts) > _MAX_LEAD_S:
            run.offset = self._clock - ts  # a clock far off the others' (or a backlog): it arrives now
        run.heard_at = self._clock if arrival is None else arrival
        self._runs[run_id] = run
        return run

    def _others_heard(self, run: RunState) -> bool:
        """Another run was heard from recently: the arrival clock has evidence besides ``run``."""
        recent = self._clock - _MAX_LEAD_S
        return any(other is not run and other.heard_at >= recent for other in self._runs.values())

    def _check_idle(self, steps: list[dict], alerts: list[dict]) -> None:
        """Runs not heard from for a while move on by the arrival time since (steps released, silent rules)."""
        self._last_idle_check = clock = self._clock
        for run in list(self._runs.values()):
            if clock - run.heard_at >= _IDLE_CHECK_S:
                _advance_by_arrival(run, clock, steps, alerts)

    def advance(self, now: float) -> Output:
        """The arrival clock is ``now``: every run moves on from its newest event by the arrival time
        since it was last heard from (overdue partial steps released, silent / hung / lost rules)."""
        out = Output()
        if now > self._clock:
            self._clock = now
        clock = self._clock
        for run in list(self._runs.values()):
            _advance_by_arrival(run, clock, out.steps, out.alerts)
        self._last_idle_check = clock
        self._sweep(out.steps, out.alerts)
        self.stats["alerts"] += len(out.alerts)
        return out.split()

    def finish(self) -> Output:
        """End of input: release every pending step; finished runs are evicted."""
        out = Output()
        for run_id, run in list(self._runs.items()):
            run.flush(out.steps, out.alerts)
            if run.ended_at is not None:
                self._evict(run_id)
        self.stats["alerts"] += len(out.alerts)
        return out.split()

    # -------------------------------------------------------------- eviction

    def _sweep(self, steps: list[dict], alerts: list[dict]) -> None:
        self._last_sweep = clock = self._clock
        for run_id, run in list(self._runs.items()):
            idle = clock - run.heard_at
            if run.ended_at is not None:
                if idle > run.aligner.grace_s():
                    run.flush(steps, alerts)
                    self._evict(run_id)
            elif idle > run.alignment.retention_s:
                run.flush(steps, alerts)
                self._evict(run_id)

    def _evict(self, run_id: str) -> None:
        run = self._runs.pop(run_id)
        self.stats["evicted_runs"] += 1
        self._evicted[run_id] = (run.aligner.restart, run.aligner.last_released)
        if len(self._evicted) > EVICTED_MEMORY:
            self._evicted.popitem(last=False)
        if self._report_evictions:
            self.evicted.append(run_id)

    def take_evicted(self) -> list[str]:
        """The runs evicted since the last call (a run evicted and relaunched since may be live again)."""
        evicted, self.evicted = self.evicted, []
        return evicted

    def was_evicted(self, run_id: str) -> bool:
        """Whether ``run_id`` is remembered as evicted (its stragglers are ignored, a run_start relaunches it)."""
        return run_id in self._evicted

    # ----------------------------------------------------------------- state

    def run_ids(self) -> list[str]:
        return sorted(self._runs)

    def has_run(self, run_id: str) -> bool:
        """Whether the engine holds ``run_id`` now (seen and not evicted since)."""
        return run_id in self._runs

    def labels(self, run_id: str) -> tuple[str, str] | None:
        """``(run_name, team)`` of a run held now (as its run_start said), else None."""
        run = self._runs.get(run_id)
        return (run.run_name, run.team) if run is not None else None

    def attempt(self, run_id: str) -> int:
        """The run's current attempt (``restart`` of its aligned steps); 0 for a run not held."""
        run = self._runs.get(run_id)
        return run.aligner.restart if run is not None else 0

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
            run.heard_at = self._clock
            self._runs[run_id] = run
            self._evicted.pop(run_id, None)
        run.load_state(state)
