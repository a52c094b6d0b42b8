"""Run-level rules over aligned steps: loss (non-finite, spike, rising, plateau) and gradients.

Each detector sees released steps in step order and keeps only bounded windows,
so its state can be exported and a restarted worker resumes where it stopped.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from rankstream.stream_jobs.core.aggregate import Window, is_finite
from rankstream.stream_jobs.core.alerts import Alerter, fmt, rank_list
from rankstream.stream_jobs.core.align import Released

GRAD_METRICS = ("grad_norm", "grad_norm_adapter", "grad_norm_backbone")


def nonfinite_ranks(rel: Released, names: tuple[str, ...]) -> list[int]:
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

    def __init__(self, rules: dict[str, dict[str, Any]]) -> None:
        self.rules = rules
        self.window = Window(rules["loss_spike"]["window"])
        self.sustained = 0
        self.rise_ewma: float | None = None
        self.rise_count = 0
        self.rise_start = 0.0
        self.plat_ewma: float | None = None
        self.best: float | None = None
        self.best_step = -1

    def on_step(self, rel: Released, warmup: bool, alerter: Alerter, out: list[dict], label: str) -> None:
        rec = rel.record
        step = rec["step"]
        ts = rec["ts_last"]
        rules = self.rules
        if rec["nonfinite"].get("loss"):
            p = rules["nonfinite_loss"]
            if p["enabled"]:
                ranks = nonfinite_ranks(rel, ("loss",))
                alerter.emit(
                    out,
                    p,
                    "nonfinite_loss",
                    p["severity"],
                    step,
                    ranks,
                    ts,
                    f"Loss is non-finite on rank(s) {rank_list(ranks)} at step {step} of {label}: stop the run, "
                    "roll back to the last good checkpoint and lower the learning rate or inspect that data batch.",
                    {"ranks": ranks, "nonfinite_ranks": len(ranks), "ranks_reported": rec["ranks_reported"]},
                    warmup=warmup,
                )
        summary = rec["metrics"].get("loss")
        if summary is None:
            return
        x = summary["mean"]
        flagged = self._spike(x, step, ts, warmup, alerter, out, label)
        if not warmup and not flagged:
            self.window.add(x)
        self._rising(x, step, ts, warmup, alerter, out, label)
        self._plateau(x, step, ts, warmup, alerter, out, label)

    def _spike(self, x: float, step: int, ts: float, warmup: bool, alerter: Alerter, out: list, label: str) -> bool:
        p = self.rules["loss_spike"]
        if len(self.window) < p["min_samples"]:
            return False
        mean, std = self.window.mean_std()
        z = (x - mean) / std if std > 0 else (math.inf if x > mean else 0.0)
        ratio = x / mean if mean > 0 else 1.0
        spike = z > p["sigma"] and x > mean + abs(mean) * p["min_rel"]
        if ratio >= p["sustained_ratio"]:
            self.sustained += 1
        else:
            self.sustained = 0
        if not p["enabled"]:
            return spike
        evidence = {
            "loss": x,
            "window_mean": mean,
            "window_std": std,
            "z": z,
            "ratio": ratio,
            "window": len(self.window),
        }
        if self.sustained >= p["sustained_steps"]:
            evidence["consecutive_steps"] = self.sustained
            alerter.emit(
                out,
                p,
                "loss_spike",
                "critical",
                step,
                [],
                ts,
                f"Loss of {label} has stayed at {fmt(ratio)}x its recent mean for {self.sustained} steps "
                f"(now {fmt(x)} at step {step}): the run is diverging, roll back to a checkpoint before "
                "the spike and lower the learning rate or skip the offending batches.",
                evidence,
                warmup=warmup,
            )
            self.window.values.clear()  # a new regime: judge what follows against itself
            self.sustained = 0
            return True
        if spike or ratio >= p["critical_ratio"]:
            base = "critical" if ratio >= p["critical_ratio"] else p["severity"]
            alerter.emit(
                out,
                p,
                "loss_spike",
                base,
                step,
                [],
                ts,
                f"Loss of {label} spiked to {fmt(x)} at step {step} ({fmt(z)} sigma, {fmt(ratio)}x the "
                f"{len(self.window)}-step mean {fmt(mean)}): check that batch's data and watch whether it "
                "recovers; if it repeats, lower the learning rate or tighten gradient clipping.",
                evidence,
                warmup=warmup,
            )
            return True
        return ratio >= p["sustained_ratio"]

    def _rising(self, x: float, step: int, ts: float, warmup: bool, alerter: Alerter, out: list, label: str) -> None:
        p = self.rules["loss_rising"]
        prev = self.rise_ewma
        ewma = x if prev is None else prev + p["ewma_alpha"] * (x - prev)
        self.rise_ewma = ewma
        if prev is None or warmup:
            self.rise_count = 0
            return
        if ewma > prev:
            if self.rise_count == 0:
                self.rise_start = prev
            self.rise_count += 1
        else:
            self.rise_count = 0
            return
        if self.rise_count < p["steps"] or not p["enabled"]:
            return
        start = self.rise_start
        rel = (ewma - start) / abs(start) if start else math.inf
        if rel < p["min_rel_rise"]:
            return
        alerter.emit(
            out,
            p,
            "loss_rising",
            p["severity"],
            step,
            [],
            ts,
            f"Smoothed loss of {label} has risen for {self.rise_count} consecutive steps "
            f"(+{fmt(rel * 100)}% to {fmt(ewma)} at step {step}): training is going the wrong way, "
            "lower the learning rate or check recent data and config changes.",
            {"consecutive_steps": self.rise_count, "loss_ewma": ewma, "start_ewma": start, "rise_rel": rel},
            warmup=warmup,
        )
        self.rise_count = 0

    def _plateau(self, x: float, step: int, ts: float, warmup: bool, alerter: Alerter, out: list, label: str) -> None:
        p = self.rules["loss_plateau"]
        prev = self.plat_ewma
        ewma = x if prev is None else prev + p["ewma_alpha"] * (x - prev)
        self.plat_ewma = ewma
        if warmup:
            self.best = None
            return
        if self.best is None or ewma < self.best - abs(self.best) * p["min_delta"]:
            self.best = ewma
            self.best_step = step
            return
        stalled = step - self.best_step
        if stalled < p["patience"]:
            return
        self.best_step = step  # restart patience: one alert per plateau (cooldown does the rest)
        if not p["enabled"]:
            return
        alerter.emit(
            out,
            p,
            "loss_plateau",
            p["severity"],
            step,
            [],
            ts,
            f"Loss of {label} has not improved by {fmt(p['min_delta'] * 100)}% for {stalled} steps "
            f"(best {fmt(self.best)}, now {fmt(ewma)} at step {step}): consider stopping, changing the "
            "learning-rate schedule or checking that the data is not repeating.",
            {"steps_without_improvement": stalled, "best_loss_ewma": self.best, "loss_ewma": ewma},
            warmup=warmup,
        )

    def to_state(self) -> dict[str, Any]:
        return {
            "window": self.window.to_list(),
            "sustained": self.sustained,
            "rise_ewma": self.rise_ewma,
            "rise_count": self.rise_count,
            "rise_start": self.rise_start,
            "plat_ewma": self.plat_ewma,
            "best": self.best,
            "best_step": self.best_step,
        }

    def load_state(self, s: dict[str, Any]) -> None:
        self.window = Window(self.rules["loss_spike"]["window"], s.get("window", []))
        self.sustained = int(s.get("sustained", 0))
        self.rise_ewma = s.get("rise_ewma")
        self.rise_count = int(s.get("rise_count", 0))
        self.rise_start = float(s.get("rise_start", 0.0))
        self.plat_ewma = s.get("plat_ewma")
        self.best = s.get("best")
        self.best_step = int(s.get("best_step", -1))


class GradDetector:
    """nonfinite_grad (fp16-scaler aware), grad_explosion, grad_vanishing, adapter_grad_vanishing."""

    def __init__(self, rules: dict[str, dict[str, Any]]) -> None:
        self.rules = rules
        self.window = Window(rules["grad_explosion"]["window"])
        self.adapter_window = Window(rules["adapter_grad_vanishing"]["window"])
        self.overflow_run = 0
        self.prev_scale: float | None = None
        self.vanish_run = 0
        self.adapter_run = 0
        self.recent_overflows: deque[int] = deque(maxlen=64)

    def on_step(self, rel: Released, warmup: bool, fp16: bool, alerter: Alerter, out: list[dict], label: str) -> None:
        rec = rel.record
        metrics = rec["metrics"]
        step = rec["step"]
        ts = rec["ts_last"]
        nonfinite = rec["nonfinite"]
        scale_summary = metrics.get("loss_scale")
        scale = scale_summary["min"] if scale_summary is not None else None
        if nonfinite and any(nonfinite.get(k) for k in GRAD_METRICS):
            self._nonfinite(rel, step, ts, warmup, fp16, scale, alerter, out, label)
        else:
            self.overflow_run = 0
        if scale is not None:
            self.prev_scale = scale
        g = metrics.get("grad_norm")
        if g is not None:
            self._magnitude(g["max"], "grad_norm_adapter" in metrics, step, ts, warmup, alerter, out, label)
        a = metrics.get("grad_norm_adapter")
        if a is not None:
            b = metrics.get("grad_norm_backbone")
            self._adapter(a["max"], b["max"] if b is not None else 0.0, step, ts, warmup, alerter, out, label)

    def _nonfinite(
        self,
        rel: Released,
        step: int,
        ts: float,
        warmup: bool,
        fp16: bool,
        scale: float | None,
        alerter: Alerter,
        out: list,
        label: str,
    ) -> None:
        p = self.rules["nonfinite_grad"]
        ranks = nonfinite_ranks(rel, GRAD_METRICS)
        self.overflow_run += 1
        self.recent_overflows.append(step)
        if not p["enabled"]:
            return
        evidence: dict[str, Any] = {"ranks": ranks, "precision": "fp16" if fp16 else "bf16/fp32"}
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
            if scale < p["fp16_min_loss_scale"]:
                sev = "critical"
                msg = (
                    f"fp16 loss scale of {label} collapsed to {fmt(scale)} at step {step} with non-finite gradients: "
                    "the model itself is overflowing, roll back and lower the learning rate or switch to bf16."
                )
            elif self.overflow_run >= p["fp16_max_consecutive"]:
                sev = "warning"
                msg = (
                    f"Gradients of {label} overflowed for {self.overflow_run} consecutive fp16 steps (loss scale "
                    f"now {fmt(scale)} at step {step}): those steps are skipped, check for a diverging loss or "
                    "lower the learning rate."
                )
            else:
                sev = p["fp16_severity"]
                msg = (
                    f"fp16 gradient overflow at step {step} of {label} (loss scale {fmt(prev or scale)} -> "
                    f"{fmt(scale)}): the loss scaler skipped this step as designed, no action needed unless it repeats."
                )
        else:
            sev = p["severity"]
            msg = (
                f"Gradient norm is non-finite on rank(s) {rank_list(ranks)} at step {step} of {label}: the update "
                "is corrupt, roll back to the last good checkpoint and lower the learning rate or inspect the batch."
            )
        alerter.emit(out, p, "nonfinite_grad", sev, step, ranks, ts, msg, evidence, warmup=warmup)

    def _magnitude(
        self, x: float, lora: bool, step: int, ts: float, warmup: bool, alerter: Alerter, out: list, label: str
    ) -> None:
        pe = self.rules["grad_explosion"]
        pv = self.rules["grad_vanishing"]
        n = len(self.window)
        med = self.window.median() if n else 0.0
        flagged = False
        if n >= pe["min_samples"] and med > 0:
            ratio = x / med
            if ratio >= pe["ratio"]:
                flagged = True
                base = "critical" if ratio >= pe["critical_ratio"] else pe["severity"]
                if pe["enabled"]:
                    alerter.emit(
                        out,
                        pe,
                        "grad_explosion",
                        base,
                        step,
                        [],
                        ts,
                        f"Gradient norm of {label} jumped to {fmt(x)} at step {step}, {fmt(ratio)}x its recent "
                        f"median {fmt(med)}: check the loss and data of that step and enable or tighten gradient "
                        "clipping.",
                        {"grad_norm": x, "window_median": med, "ratio": ratio, "window": n},
                        warmup=warmup,
                    )
        small = x < pv["abs_threshold"] or (n >= pv["min_samples"] and x < pv["rel_threshold"] * med)
        if small and not lora:
            flagged = True
            self.vanish_run += 1
            if self.vanish_run >= pv["steps"] and pv["enabled"]:
                alerter.emit(
                    out,
                    pv,
                    "grad_vanishing",
                    pv["severity"],
                    step,
                    [],
                    ts,
                    f"Gradient norm of {label} has been {fmt(x)} for {self.vanish_run} steps (recent median "
                    f"{fmt(med)}) at step {step}: the model has stopped learning, check for frozen parameters, "
                    "a zero learning rate or saturated activations.",
                    {"grad_norm": x, "window_median": med, "consecutive_steps": self.vanish_run},
                    warmup=warmup,
                )
        else:
            self.vanish_run = 0
        if not warmup and not flagged:
            self.window.add(x)

    def _adapter(
        self, a: float, b: float, step: int, ts: float, warmup: bool, alerter: Alerter, out: list, label: str
    ) -> None:
        p = self.rules["adapter_grad_vanishing"]
        n = len(self.adapter_window)
        med = self.adapter_window.median() if n else 0.0
        small = a < p["abs_threshold"] or (n >= p["min_samples"] and a < p["rel_threshold"] * med)
        if small and b <= p["backbone_max"]:
            self.adapter_run += 1
            if self.adapter_run >= p["steps"] and p["enabled"]:
                alerter.emit(
                    out,
                    p,
                    "adapter_grad_vanishing",
                    p["severity"],
                    step,
                    [],
                    ts,
                    f"LoRA adapter gradient norm of {label} has been {fmt(a)} for {self.adapter_run} steps with "
                    f"the backbone frozen (step {step}): the adapters are not learning, check that they are "
                    "attached to the right modules, marked trainable and that the learning rate is not zero.",
                    {
                        "grad_norm_adapter": a,
                        "grad_norm_backbone": b,
                        "window_median": med,
                        "consecutive_steps": self.adapter_run,
                    },
                    warmup=warmup,
                )
            return
        self.adapter_run = 0
        if not warmup and is_finite(a):
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
        self.window = Window(self.rules["grad_explosion"]["window"], s.get("window", []))
        self.adapter_window = Window(self.rules["adapter_grad_vanishing"]["window"], s.get("adapter_window", []))
        self.overflow_run = int(s.get("overflow_run", 0))
        self.prev_scale = s.get("prev_scale")
        self.vanish_run = int(s.get("vanish_run", 0))
        self.adapter_run = int(s.get("adapter_run", 0))
        self.recent_overflows = deque(s.get("recent_overflows", []), maxlen=64)
