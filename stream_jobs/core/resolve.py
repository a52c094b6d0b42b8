"""Alert resolution: which firing alerts of a run have stopped holding, as ``state: resolved`` records.

Why: AlertManager and chat show what is wrong *now*. An alert record says a
condition started; without its end, a rank that came back still reads as dead
and a recovered loss still pages. Resolution reuses the firing alert's
``alert_id`` (AlertManager resolves by identity) and says when and why.

Three ways an alert ends, by rule (docs/rules.md, "Resolution"):

* liveness rules (rank_silent, rank_hung, run_lost) are re-evaluated as a whole at
  every check: an open alert whose (rule, ranks) the check no longer finds is resolved;
* per-step rules whose detectors report the condition at every logged step while it
  holds resolve once it has not been seen for the rule's cooldown (``cooldown_steps``,
  at least :data:`QUIET_STEPS`, and at least ``cooldown_points`` and ``recover_steps``
  logged points): so a repeat inside the cooldown stays one alert, as before resolution
  existed, and a run logged every 500 steps is not resolved at its first clean point;
* everything still open resolves when the run ends (every rank sent run_end).

Rules that report an event rather than a condition (membership_changed, clock_skew,
loss_plateau, loss_rising, eval_loss_rising) are not tracked: they never get a resolved record.
"""

from __future__ import annotations

from typing import Any, Final

#: Re-evaluated as a whole at each liveness check.
LIVENESS_RULES: Final = frozenset({"rank_silent", "rank_hung", "run_lost"})
#: Their detectors report the condition at every logged step while it holds.
PER_STEP_RULES: Final = frozenset(
    {
        "nonfinite_loss",
        "nonfinite_grad",
        "loss_spike",
        "grad_explosion",
        "grad_vanishing",
        "adapter_grad_vanishing",
        "straggler",
        "rank_lagging",
        "memory_pressure",
    }
)
RESOLVING_RULES: Final = LIVENESS_RULES | PER_STEP_RULES
#: The fewest steps without a per-step rule's finding after which its alert resolves.
QUIET_STEPS: Final = 5
#: Open alerts kept per run (oldest resolved beyond: a storm must not grow the state).
MAX_OPEN: Final = 256

Key = tuple[str, tuple[int, ...]]


class OpenAlerts:
    """Firing alerts of one run not resolved yet, per (rule, ranks), and when each was last seen holding."""

    __slots__ = ("_cooldowns", "_open")

    def __init__(self, cooldowns: dict[Key, Any] | None = None) -> None:
        #: (rule, ranks) -> [last step the condition was seen, [firing alert records (trimmed)], quiet steps,
        #: quiet logged points]
        self._open: dict[Key, list[Any]] = {}
        #: The alerter's cooldowns: a resolved condition that comes back alerts at once, not after the cooldown.
        self._cooldowns = cooldowns if cooldowns is not None else {}

    def __len__(self) -> int:
        return len(self._open)

    def seen(self, key: Key, step: int) -> None:
        """The condition ``key`` holds at ``step`` (an alert fired or cooldown kept it quiet)."""
        entry = self._open.get(key)
        if entry is not None and step > entry[0]:
            entry[0] = step

    def fired(
        self, key: Key, alert: dict[str, Any], out: list[dict], quiet: int = QUIET_STEPS, quiet_points: int = 0
    ) -> None:
        """Track a firing alert of a resolving rule; ``quiet`` steps and at least ``quiet_points`` logged points
        without it resolve it."""
        if key[0] not in RESOLVING_RULES:
            return
        kept = {k: alert[k] for k in ("alert_id", "run_id", "team", "rule", "severity", "step", "ranks")}
        entry = self._open.get(key)
        if entry is None:
            self._open[key] = [alert["step"], [kept], quiet, quiet_points]
        else:
            entry[0] = max(entry[0], alert["step"])
            entry[1].append(kept)
        if len(self._open) > MAX_OPEN:  # resolve the stalest: its condition was last seen longest ago
            stalest = min(self._open, key=lambda k: self._open[k][0])
            self._resolve(stalest, alert["step"], alert["ts"], "too many open alerts in this run", out)

    def resolve_absent(self, present: set[Key], step: int, ts: float, out: list[dict]) -> None:
        """Liveness rules: resolve open alerts whose condition the latest check did not find."""
        for key in [k for k in self._open if k[0] in LIVENESS_RULES and k not in present]:
            wider = [p for p in present if p[0] == key[0] and set(key[1]) <= set(p[1])]
            why = f"now part of the alert on rank(s) {_ranks(wider[0][1])}" if wider else _LIVENESS_WHY[key[0]]
            self._resolve(key, step, ts, why, out)

    def resolve_quiet(self, step: int, ts: float, out: list[dict], cadence: int = 1) -> None:
        """Per-step rules: resolve those not seen for their quiet steps (and quiet logged points of ``cadence``
        steps) up to ``step``."""
        for key, entry in list(self._open.items()):
            if key[0] not in PER_STEP_RULES:
                continue
            gap = step - entry[0]
            if gap >= max(entry[2], entry[3] * cadence):  # by then its cooldown has passed too: a return is new
                self._resolve(key, step, ts, f"not seen for {gap} steps", out, rearm=False)
            elif gap < 0:  # steps went back: a new attempt (relaunch from a checkpoint) started afresh
                self._resolve(key, step, ts, "the run was relaunched from an earlier step", out)

    def resolve_all(self, step: int, ts: float, why: str, out: list[dict]) -> None:
        for key in list(self._open):
            self._resolve(key, step, ts, why, out)

    def _resolve(self, key: Key, step: int, ts: float, why: str, out: list[dict], *, rearm: bool = True) -> None:
        """``rearm``: the condition is known to be over, so its return alerts at once (cooldown cleared)."""
        alerts = self._open.pop(key)[1]
        if rearm:
            self._cooldowns.pop(key, None)
        for fired in alerts:
            out.append(resolved_record(fired, step, ts, why))

    def to_state(self) -> list[list[Any]]:
        return [[rule, list(ranks), *entry] for (rule, ranks), entry in self._open.items()]

    def load_state(self, state: list[list[Any]]) -> None:
        """A saved state; one saved before quiet logged points existed (5 items an entry) counts steps only."""
        self._open = {
            (rule, tuple(ranks)): [int(last), list(alerts), int(quiet), int(points[0]) if points else 0]
            for rule, ranks, last, alerts, quiet, *points in state
        }


_LIVENESS_WHY = {
    "rank_silent": "the rank(s) are heard from again",
    "rank_hung": "the rank(s) complete steps again",
    "run_lost": "the run is heard from again",
}


def _ranks(ranks: list[int] | tuple[int, ...]) -> str:
    return ", ".join(str(r) for r in ranks[:8]) + (f" and {len(ranks) - 8} more" if len(ranks) > 8 else "")


def resolved_record(fired: dict[str, Any], step: int, ts: float, why: str) -> dict[str, Any]:
    """The ``resolved`` record of a firing alert: same ``alert_id``, rule, severity, trigger step and ranks."""
    from rankstream.schema import SCHEMA_VERSION

    ranks = fired["ranks"]
    on = f" on rank(s) {_ranks(ranks)}" if ranks else ""
    return {
        "v": SCHEMA_VERSION,
        "alert_id": fired["alert_id"],
        "run_id": fired.get("run_id", ""),
        "team": fired.get("team", ""),
        "rule": fired["rule"],
        "severity": fired["severity"],
        "step": fired["step"],
        "ranks": ranks,
        "ts": ts,
        "state": "resolved",
        "resolved_step": step,
        "message": f"Resolved: {fired['rule']}{on} (fired at step {fired['step']}) at step {step}: {why}.",
        "evidence": {"fired_step": fired["step"], "resolved_step": step, "why": why},
    }


__all__ = ["LIVENESS_RULES", "PER_STEP_RULES", "QUIET_STEPS", "RESOLVING_RULES", "OpenAlerts", "resolved_record"]
