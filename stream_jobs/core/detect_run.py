"""Run-level rules over aligned steps: gradients (the loss rules are in ``detect_loss``).

Each detector sees released steps in step order and keeps only bounded windows,
so its state can be exported and a restarted worker resumes where it stopped.
Detectors score and return :class:`Finding` values; the run's ``Alerter``
applies alert policy (warmup mode, cooldown) to them.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from rankstream.stream_jobs.core.aggregate import Window, is_finite
from rankstream.stream_jobs.core.alerts import Finding, StepContext, fmt, rank_list
from rankstream.stream_jobs.core.align import Released
from rankstream.stream_jobs.core.detect_loss import LossDetector, nonfinite_ranks
from rankstream.stream_jobs.core.params import RuleSet, Severity

__all__ = ["GRAD_METRICS", "GradDetector", "LossDetector", "nonfinite_ranks"]

GRAD_METRICS = ("grad_norm", "grad_norm_adapter", "grad_norm_backbone")


class GradDetector:
    """nonfinite_grad (fp16-scaler aware), grad_explosion, grad_vanishing, adapter_grad_vanishing."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.window = Window(rules.grad_explosion.window)
        self.adapter_window = Window(rules.adapter_grad_vanishing.window)
        self.overflow_run = 0
        self.prev_scale: float | None = None
        self.vanish_run = 0
        self.adapter_run = 0
        self.recent_overflows: deque[int] = deque(maxlen=64)

    def on_step(self, rel: Released, *, warmup: bool, fp16: bool, label: str) -> list[Finding]:
        """Score one released step; ``fp16``: the run trains under a dynamic loss scale."""
        rec = rel.record
        metrics = rec["metrics"]
        at = StepContext(rec["step"], rec["ts_last"], warmup, label)
        found: list[Finding] = []
        nonfinite = rec["nonfinite"]
        scale_summary = metrics.get("loss_scale")
        scale = scale_summary["min"] if scale_summary is not None else None
        if nonfinite and any(nonfinite.get(k) for k in GRAD_METRICS):
            self._nonfinite(rel, at, found, fp16=fp16, scale=scale)
        else:
            self.overflow_run = 0
        if scale is not None:
            self.prev_scale = scale
        g = metrics.get("grad_norm")
        if g is not None:
            self._magnitude(g["max"], at, found, lora="grad_norm_adapter" in metrics)
        a = metrics.get("grad_norm_adapter")
        if a is not None:
            b = metrics.get("grad_norm_backbone")
            self._adapter(a["max"], at, found, backbone=b["max"] if b is not None else 0.0)
        return found

    def _nonfinite(
        self, rel: Released, at: StepContext, found: list[Finding], *, fp16: bool, scale: float | None
    ) -> None:
        """nonfinite_grad; under fp16 an occasional overflow is the loss scaler working, not a fault."""
        p = self.rules.nonfinite_grad
        ranks = nonfinite_ranks(rel, GRAD_METRICS)
        self.overflow_run += 1
        self.recent_overflows.append(at.step)
        if not p.enabled:
            return
        label, step = at.label, at.step
        evidence: dict[str, Any] = {"ranks": ranks, "precision": "fp16" if fp16 else "bf16/fp32"}
        sev: Severity
        if fp16 and scale is not None:
            prev = self.prev_scale
            halved = prev is not None and scale < prev
            evidence.update(
                {
                    "loss_scale": scale,
                    "prev_loss_scale": prev,
                    "scale_reduced": halved,
                    "consecutive_overflow_steps": self.overflow_run,
                    "overflow_steps_in_last_64": len(self.recent_overflows),
                }
            )
            if scale < p.fp16_min_loss_scale:
                sev = "critical"
                msg = (
                    f"fp16 loss scale of {label} collapsed to {fmt(scale)} at step {step} with non-finite gradients: "
                    "the model itself is overflowing, roll back and lower the learning rate or switch to bf16."
                )
            elif self.overflow_run >= p.fp16_max_consecutive:
                sev = "warning"
                msg = (
                    f"Gradients of {label} overflowed for {self.overflow_run} consecutive fp16 steps (loss scale "
                    f"now {fmt(scale)} at step {step}): those steps are skipped, check for a diverging loss or "
                    "lower the learning rate."
                )
            else:
                sev = p.fp16_severity
                msg = (
                    f"fp16 gradient overflow at step {step} of {label} (loss scale {fmt(prev or scale)} -> "
                    f"{fmt(scale)}): the loss scaler skipped this step as designed, no action needed unless it repeats."
                )
        else:
            sev = p.severity
            msg = (
                f"Gradient norm is non-finite on rank(s) {rank_list(ranks)} at step {step} of {label}: the update "
                "is corrupt, roll back to the last good checkpoint and lower the learning rate or inspect the batch."
            )
        found.append(at.finding("nonfinite_grad", sev, message=msg, evidence=evidence, ranks=ranks))

    def _magnitude(self, x: float, at: StepContext, found: list[Finding], *, lora: bool) -> None:
        """grad_explosion and grad_vanishing on the max-over-ranks ``grad_norm`` (vanishing skipped for LoRA)."""
        pe = self.rules.grad_explosion
        pv = self.rules.grad_vanishing
        label, step = at.label, at.step
        n = len(self.window)
        med = self.window.median() if n else 0.0
        flagged = False
        if n >= pe.min_samples and med > 0:
            ratio = x / med
            if ratio >= pe.ratio:
                flagged = True
                if pe.enabled:
                    found.append(
                        at.finding(
                            "grad_explosion",
                            "critical" if ratio >= pe.critical_ratio else pe.severity,
                            message=f"Gradient norm of {label} jumped to {fmt(x)} at step {step}, {fmt(ratio)}x its "
                            f"recent median {fmt(med)}: check the loss and data of that step and enable or tighten "
                            "gradient clipping.",
                            evidence={"grad_norm": x, "window_median": med, "ratio": ratio, "window": n},
                        )
                    )
        small = x < pv.abs_threshold or (n >= pv.min_samples and x < pv.rel_threshold * med)
        if small and not lora:
            flagged = True
            self.vanish_run += 1
            if self.vanish_run >= pv.steps and pv.enabled:
                found.append(
                    at.finding(
                        "grad_vanishing",
                        pv.severity,
                        message=f"Gradient norm of {label} has been {fmt(x)} for {self.vanish_run} steps (recent "
                        f"median {fmt(med)}) at step {step}: the model has stopped learning, check for frozen "
                        "parameters, a zero learning rate or saturated activations.",
                        evidence={"grad_norm": x, "window_median": med, "consecutive_steps": self.vanish_run},
                    )
                )
        else:
            self.vanish_run = 0
        if not at.warmup and not flagged:
            self.window.add(x)

    def _adapter(self, a: float, at: StepContext, found: list[Finding], *, backbone: float) -> None:
        """adapter_grad_vanishing: LoRA adapters not learning while the backbone is frozen."""
        p = self.rules.adapter_grad_vanishing
        n = len(self.adapter_window)
        med = self.adapter_window.median() if n else 0.0
        small = a < p.abs_threshold or (n >= p.min_samples and a < p.rel_threshold * med)
        if small and backbone <= p.backbone_max:
            self.adapter_run += 1
            if self.adapter_run >= p.steps and p.enabled:
                found.append(
                    at.finding(
                        "adapter_grad_vanishing",
                        p.severity,
                        message=f"LoRA adapter gradient norm of {at.label} has been {fmt(a)} for {self.adapter_run} "
                        f"steps with the backbone frozen (step {at.step}): the adapters are not learning, check that "
                        "they are attached to the right modules, marked trainable and that the learning rate is not "
                        "zero.",
                        evidence={
                            "grad_norm_adapter": a,
                            "grad_norm_backbone": backbone,
                            "window_median": med,
                            "consecutive_steps": self.adapter_run,
                        },
                    )
                )
            return
        self.adapter_run = 0
        if not at.warmup and is_finite(a):
            self.adapter_window.add(a)

    def to_state(self) -> dict[str, Any]:
        return {
            "window": self.window.to_list(),
            "adapter_window": self.adapter_window.to_list(),
            "overflow_run": self.overflow_run,
            "prev_scale": self.prev_scale,
            "vanish_run": self.vanish_run,
            "adapter_run": self.adapter_run,
            "recent_overflows": list(self.recent_overflows),
        }

    def load_state(self, s: dict[str, Any]) -> None:
        self.window = Window(self.rules.grad_explosion.window, s.get("window", []))
        self.adapter_window = Window(self.rules.adapter_grad_vanishing.window, s.get("adapter_window", []))
        self.overflow_run = int(s.get("overflow_run", 0))
        self.prev_scale = s.get("prev_scale")
        self.vanish_run = int(s.get("vanish_run", 0))
        self.adapter_run = int(s.get("adapter_run", 0))
        self.recent_overflows = deque(s.get("recent_overflows", []), maxlen=64)
