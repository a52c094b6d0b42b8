"""Loss rules over aligned steps: nonfinite_loss, loss_spike, and (via ``loss_trend``) loss_rising, loss_plateau.

The detector sees released steps in step order and keeps only bounded windows,
so its state can be exported and a restarted worker resumes where it stopped.
It scores and returns :class:`Finding` values; the run's ``Alerter`` applies
alert policy (warmup mode, cooldown) to them.
"""

from __future__ import annotations

import math
from typing import Any

from rankstream.stream_jobs.core.aggregate import Window
from rankstream.stream_jobs.core.alerts import Finding, StepContext, fmt, rank_list
from rankstream.stream_jobs.core.align import Released
from rankstream.stream_jobs.core.loss_trend import PlateauRule, RisingRule
from rankstream.stream_jobs.core.params import RuleSet


def nonfinite_ranks(rel: Released, names: tuple[str, ...]) -> list[int]:
    """Ranks of ``rel`` with a non-finite value for any of ``names``, in rank order."""
    out = []
    for rank, metrics in zip(rel.ranks, rel.metrics, strict=True):
        for name in names:
            v = metrics.get(name)
            if v is not None and v - v != 0.0:
                out.append(rank)
                break
    return out


class LossDetector:
    """nonfinite_loss, loss_spike, loss_rising, loss_plateau on the cross-rank mean loss."""

    def __init__(self, rules: RuleSet) -> None:
        self._rules = rules
        self.window = Window(rules.loss_spike.window)
        self.sustained = 0
        self.rising = RisingRule(rules.loss_rising)
        self.plateau = PlateauRule(rules.loss_plateau)

    @property
    def rules(self) -> RuleSet:
        return self._rules

    @rules.setter
    def rules(self, rules: RuleSet) -> None:
        """Team / run_name overrides became known: the trend rules read the new settings from here on."""
        self._rules = rules
        self.rising.p = rules.loss_rising
        self.plateau.p = rules.loss_plateau

    def new_attempt(self, step: int) -> None:
        """The run resumed from a checkpoint at ``step``: the loss goes back to the checkpoint's value, which
        is not a rise; the trend and plateau readings start over (the spike window is kept: same run)."""
        self.sustained = 0
        self.rising.reset()
        self.plateau.reset()

    def on_step(self, rel: Released, *, warmup: bool, label: str, trend: bool = True) -> list[Finding]:
        """Score one released step; findings come in the order their rules are checked. ``trend`` False: the
        step's mean loss is not the run's (fewer than half the ranks reported, e.g. while backlogs drain
        after a broker outage), so only the per-rank check (non-finite) runs."""
        rec = rel.record
        step = rec["step"]
        at = StepContext(step, rec["ts_last"], warmup, label)
        found: list[Finding] = []
        if rec["nonfinite"].get("loss"):
            p = self.rules.nonfinite_loss
            if p.enabled:
                ranks = nonfinite_ranks(rel, ("loss",))
                found.append(
                    at.finding(
                        "nonfinite_loss",
                        p.severity,
                        message=f"Loss is non-finite on rank(s) {rank_list(ranks)} at step {step} of {label}: "
                        "stop the run, roll back to the last good checkpoint and lower the learning rate or "
                        "inspect that data batch.",
                        evidence={
                            "ranks": ranks,
                            "nonfinite_ranks": len(ranks),
                            "ranks_reported": rec["ranks_reported"],
                        },
                        ranks=ranks,
                    )
                )
        summary = rec["metrics"].get("loss")
        if summary is None or not trend:
            return found
        x = summary["mean"]
        flagged = self._spike(x, at, found)
        if not warmup and not flagged:
            self.window.add(x)
        self.rising.on_point(x, at, found)
        self.plateau.on_point(x, at, found)
        return found

    def _spike(self, x: float, at: StepContext, found: list[Finding]) -> bool:
        """loss_spike; True when ``x`` must stay out of the baseline window."""
        p = self.rules.loss_spike
        if len(self.window) < p.min_samples:
            return False
        mean, std = self.window.mean_std()
        z = (x - mean) / std if std > 0 else (math.inf if x > mean else 0.0)
        ratio = x / mean if mean > 0 else 1.0
        spike = z > p.sigma and x > mean + abs(mean) * p.min_rel
        if ratio >= p.sustained_ratio:
            self.sustained += 1
        else:
            self.sustained = 0
        if not p.enabled:
            return spike
        evidence = {
            "loss": x,
            "window_mean": mean,
            "window_std": std,
            "z": z,
            "ratio": ratio,
            "window": len(self.window),
        }
        label, step = at.label, at.step
        if self.sustained >= p.sustained_steps:
            evidence["consecutive_steps"] = self.sustained
            found.append(
                at.finding(
                    "loss_spike",
                    "critical",
                    message=f"Loss of {label} has stayed at {fmt(ratio)}x its recent mean for {self.sustained} "
                    f"steps (now {fmt(x)} at step {step}): the run is diverging, roll back to a checkpoint before "
                    "the spike and lower the learning rate or skip the offending batches.",
                    evidence=evidence,
                )
            )
            self.window.values.clear()  # a new regime: judge what follows against itself
            self.sustained = 0
            return True
        if spike or ratio >= p.critical_ratio:
            found.append(
                at.finding(
                    "loss_spike",
                    "critical" if ratio >= p.critical_ratio else p.severity,
                    message=f"Loss of {label} spiked to {fmt(x)} at step {step} ({fmt(z)} sigma, {fmt(ratio)}x the "
                    f"{len(self.window)}-step mean {fmt(mean)}): check that batch's data and watch whether it "
                    "recovers; if it repeats, lower the learning rate or tighten gradient clipping.",
                    evidence=evidence,
                )
            )
            return True
        return ratio >= p.sustained_ratio

    def to_state(self) -> dict[str, Any]:
        return {
            "window": self.window.to_list(),
            "sustained": self.sustained,
            "rising": self.rising.to_state(),
            "plateau": self.plateau.to_state(),
        }

    def load_state(self, s: dict[str, Any]) -> None:
        """A saved state; one saved before the trend rules changed (no ``rising``/``plateau``) starts them over."""
        self.window = Window(self.rules.loss_spike.window, s.get("window", []))
        self.sustained = int(s.get("sustained", 0))
        self.rising.load_state(s.get("rising", {}))
        self.plateau.load_state(s.get("plateau", {}))
