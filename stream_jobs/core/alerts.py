"""Alert policy: findings become alert records (deterministic ids, cooldown per (rule, ranks), JSON-safe evidence).

Detectors only score: they return :class:`Finding` values saying what they saw;
the :class:`Alerter` decides what becomes an alert. A rule that keeps firing
would flood people; after an alert, the same (run, rule, ranks) stays quiet for
``cooldown_steps`` steps, and at least ``cooldown_points`` of the run's logged points,
unless the severity rises. Cooldown counts steps (not arrival time), so replaying the
same events in another order gives the same alerts; the floor in logged points keeps a
run logged every 500 steps from being re-alerted at every point.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rankstream.schema import SCHEMA_VERSION, alert_id, encode_metric
from rankstream.stream_jobs.core.params import RuleParams, RuleSet, Severity
from rankstream.stream_jobs.core.resolve import QUIET_STEPS, OpenAlerts

SEVERITY_LEVEL = {"info": 0, "warning": 1, "critical": 2}


def clean(value: Any) -> Any:
    """Evidence as plain JSON: non-finite floats become "nan"/"inf", floats keep 6 significant digits."""
    if isinstance(value, float):
        if value - value != 0.0:
            return encode_metric(value)
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def fmt(value: float) -> str:
    """A number for a human sentence."""
    if value - value != 0.0:
        return str(encode_metric(value))
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.2e}"


@dataclass(frozen=True)
class Finding:
    """What a detector found at one step, before alert policy (warmup mode, cooldown) applies."""

    rule: str
    #: The severity outside warmup (a detector may raise it above the rule's ``severity``).
    severity: Severity
    step: int
    ranks: tuple[int, ...]
    #: Event time of the finding (the step's newest event, or the clock for time-based rules).
    ts: float
    #: One sentence for a person: what happened and what to check.
    message: str
    #: The numbers behind it; floats are rounded when the alert is built.
    evidence: dict[str, Any]
    #: The step counts as warmup: the rule's ``during_warmup`` mode applies.
    warmup: bool = False


@dataclass(frozen=True, slots=True)
class StepContext:
    """Where a detector is looking: the step, its event time, whether it is warmup, the run's label."""

    step: int
    ts: float
    warmup: bool
    #: How messages name the run (``run NAME (ID)``).
    label: str

    def finding(
        self,
        rule: str,
        severity: Severity,
        *,
        message: str,
        evidence: dict[str, Any],
        ranks: list[int] | tuple[int, ...] = (),
    ) -> Finding:
        """A :class:`Finding` at this step."""
        return Finding(rule, severity, self.step, tuple(ranks), self.ts, message, evidence, self.warmup)


def severity_for(params: RuleParams, severity: Severity, warmup: bool) -> Severity | None:
    """The severity to use, given the rule's ``during_warmup`` mode; None means stay quiet."""
    if warmup:
        mode = params.during_warmup
        if mode == "suppress":
            return None
        if mode == "info":
            return "info"
    return severity


def cooldown_span(policy: RuleParams, cadence: int) -> int:
    """Steps the cooldown of ``policy`` lasts for a run logged every ``cadence`` steps: ``cooldown_steps``, and
    at least min(``cooldown_points``, ``cooldown_steps``) logged points (at cadence 1: ``cooldown_steps``)."""
    steps = policy.cooldown_steps
    return max(steps, min(policy.cooldown_points, steps) * cadence)


class LoggingCadence:
    """The run's logging interval in steps: the median gap between its last released steps (1 until known).

    Why a median of a few: HF Trainer logs every ``logging_steps`` but its first point is step 1, a lost
    point doubles one gap, and a resume from a checkpoint sends the steps back; none of these is the cadence.
    """

    __slots__ = ("gaps", "last")

    GAPS = 9

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.last = int(state["last"]) if state else -1
        self.gaps: deque[int] = deque((int(g) for g in state["gaps"]) if state else (), maxlen=self.GAPS)

    def logged(self, step: int) -> None:
        """A step was released (logged by the run); steps that go back (a new attempt) add no gap."""
        if self.last >= 0 and step > self.last:
            self.gaps.append(step - self.last)
        self.last = step

    @property
    def steps(self) -> int:
        if not self.gaps:
            return 1
        ordered = sorted(self.gaps)
        return ordered[(len(ordered) - 1) // 2]

    def to_state(self) -> dict[str, Any]:
        return {"last": self.last, "gaps": list(self.gaps)}


def rank_list(ranks: list[int] | tuple[int, ...]) -> str:
    if len(ranks) > 8:
        return ", ".join(str(r) for r in ranks[:8]) + f" and {len(ranks) - 8} more"
    return ", ".join(str(r) for r in ranks)


class Alerter:
    """Builds alerts for one run and applies cooldown; its state is small and exportable."""

    __slots__ = ("_last", "cadence", "open", "run_id", "suppressed", "team")

    def __init__(self, run_id: str, team: str = "") -> None:
        self.run_id = run_id
        self.team = team
        # (rule, ranks) -> (step of the last alert, its severity level)
        self._last: dict[tuple[str, tuple[int, ...]], tuple[int, int]] = {}
        self.suppressed = 0
        #: Firing alerts not resolved yet (:mod:`.resolve`).
        self.open = OpenAlerts(cooldowns=self._last)
        #: The run's logging interval (the run feeds it its released steps; every step until then).
        self.cadence = LoggingCadence()

    def emit_all(self, findings: Iterable[Finding], rules: RuleSet, out: list[dict]) -> None:
        """:meth:`emit` each finding, in order, under its rule's parameters in ``rules``."""
        for finding in findings:
            self.emit(finding, policy=rules.params(finding.rule), out=out)

    def emit(self, finding: Finding, *, policy: RuleParams, out: list[dict]) -> dict | None:
        """Append the alert to ``out`` unless warmup mutes it (``policy.during_warmup``) or its
        cooldown (:func:`cooldown_span`) holds; returns the alert appended, if any."""
        severity = finding.severity
        if finding.warmup:
            muted = severity_for(policy, severity, True)
            if muted is None:
                return None
            severity = muted
        rule = finding.rule
        step = finding.step
        ranks_t = tuple(sorted(finding.ranks))
        key = (rule, ranks_t)
        level = SEVERITY_LEVEL[severity]
        self.open.seen(key, step)
        last = self._last.get(key)
        if last is not None:
            last_step, last_level = last
            quiet = cooldown_span(policy, self.cadence.steps)
            if step - last_step < quiet and level <= last_level and step >= last_step:
                self.suppressed += 1
                return None
        self._last[key] = (step, level)
        if len(self._last) > 512:
            self._prune(step)
        alert = {
            "v": SCHEMA_VERSION,
            "alert_id": alert_id(self.run_id, rule, step, ranks_t),
            "run_id": self.run_id,
            "team": self.team,
            "rule": rule,
            "severity": severity,
            "step": step,
            "ranks": list(ranks_t),
            "ts": finding.ts,
            "state": "firing",
            "message": finding.message,
            "evidence": clean(finding.evidence),
        }
        out.append(alert)
        quiet = max(QUIET_STEPS, policy.cooldown_steps, getattr(policy, "recover_steps", 0))
        # Logged points: the cooldown's floor, and recover_steps (which counts logged points) in full.
        quiet_points = max(min(policy.cooldown_points, quiet), getattr(policy, "recover_steps", 0))
        self.open.fired(key, alert, out, quiet=quiet, quiet_points=quiet_points)
        return alert

    def _prune(self, step: int) -> None:
        # Entries older than any plausible cooldown go first; keep the newest 256 at most.
        items = sorted(self._last.items(), key=lambda kv: kv[1][0], reverse=True)[:256]
        self._last.clear()  # in place: the open alerts hold this dict
        self._last.update(items)

    def to_state(self) -> list[list[Any]]:
        return [[rule, list(ranks), step, level] for (rule, ranks), (step, level) in self._last.items()]

    def load_state(self, state: list[list[Any]]) -> None:
        self._last.clear()  # in place: the open alerts hold this dict
        self._last.update({(rule, tuple(ranks)): (int(step), int(level)) for rule, ranks, step, level in state})
