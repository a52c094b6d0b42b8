"""Per-rank rules over aligned steps: straggler, rank_lagging (stamp skew, late arrival), memory_pressure.

In synchronous training every rank's ``step_time_s`` is about the same (fast
ranks wait in the all-reduce), so a slow rank is found from its own
``compute_time_s`` + ``data_time_s`` (falling back to how late its events are
stamped). Each rule needs several consecutive steps, so one hiccup is not an alert.
"""

from __future__ import annotations

from typing import Any

from rankstream.stream_jobs.core.aggregate import median
from rankstream.stream_jobs.core.alerts import Finding, StepContext, fmt
from rankstream.stream_jobs.core.align import Released
from rankstream.stream_jobs.core.params import RuleSet
from rankstream.stream_jobs.core.skew import MIN_OFFSET_S


def _bump(counts: dict[int, int], flagged: dict[int, Any]) -> None:
    """Count consecutive flagged steps per rank: a rank not flagged this step starts again from zero."""
    for rank in list(counts):
        if rank not in flagged:
            del counts[rank]
    for rank in flagged:
        counts[rank] = counts.get(rank, 0) + 1


class RankDetector:
    """straggler, rank_lagging and memory_pressure; each counts a rank's consecutive flagged steps."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.straggle: dict[int, int] = {}
        self.lag: dict[int, int] = {}
        self.late: dict[int, int] = {}
        self.mem: dict[int, int] = {}

    # ----------------------------------------------------------------- straggler

    def on_step(self, rel: Released, *, median_step: float, warmup: bool, label: str) -> list[Finding]:
        """Score one released step; ``median_step`` is the run's median step time (s)."""
        rec = rel.record
        metrics = rec["metrics"]
        at = StepContext(rec["step"], rec["ts_last"], warmup, label)
        found: list[Finding] = []
        if len(rel.ranks) >= 2:
            self._straggler(rel, at, found, median_step=median_step)
            self._lagging(rel, at, found, median_step=median_step)
        if "mem_peak_mb" in metrics and "mem_total_mb" in metrics:
            self._memory(rel, at, found)
        elif self.mem:
            self.mem.clear()
        return found

    def _straggler(self, rel: Released, at: StepContext, found: list[Finding], *, median_step: float) -> None:
        p = self.rules.straggler
        metrics = rel.record["metrics"]
        c = metrics.get("compute_time_s")
        d = metrics.get("data_time_s")
        flagged: dict[int, dict[str, Any]] = {}
        if c is not None or d is not None:
            lo = (c["min"] if c else 0.0) + (d["min"] if d else 0.0)
            hi = (c["max"] if c else 0.0) + (d["max"] if d else 0.0)
            # Quick exit: nobody can score below the threshold when max/min is small.
            if hi > 0 and lo / hi < p.score_threshold:
                own = [m.get("compute_time_s", 0.0) + m.get("data_time_s", 0.0) for m in rel.metrics]
                own = [v if v - v == 0.0 else 0.0 for v in own]
                med = median(own)
                min_extra = max(p.min_extra_frac * median_step, p.min_extra_s)
                for rank, v, m in zip(rel.ranks, own, rel.metrics, strict=True):
                    if v > 0 and med / v < p.score_threshold and v - med >= min_extra:
                        flagged[rank] = {
                            "score": med / v,
                            "own_time_s": v,
                            "median_own_time_s": med,
                            "compute_time_s": m.get("compute_time_s"),
                            "data_time_s": m.get("data_time_s"),
                            "signal": "compute_time_s+data_time_s",
                        }
        elif median_step > 0 and rel.record["ts_last"] - rel.record["ts_first"] >= p.skew_frac * median_step:
            med_ts = median(rel.ts)
            for rank, t in zip(rel.ranks, rel.ts, strict=True):
                skew = t - med_ts
                if p.skew_frac * median_step <= skew < MIN_OFFSET_S:  # further off: a clock (clock_skew)
                    flagged[rank] = {"ts_skew_s": skew, "median_step_time_s": median_step, "signal": "ts skew"}
        _bump(self.straggle, flagged)
        if not p.enabled:
            return
        step = at.step
        for rank, ev in flagged.items():
            count = self.straggle[rank]
            if count < p.persist_steps:
                continue
            ev["consecutive_steps"] = count
            if "score" in ev:
                what = (
                    f"takes {fmt(ev['own_time_s'])} s of its own compute+data time per step vs a median of "
                    f"{fmt(ev['median_own_time_s'])} s (score {fmt(ev['score'])})"
                )
            else:
                what = f"stamps its steps {fmt(ev['ts_skew_s'])} s after the median rank"
            found.append(
                at.finding(
                    "straggler",
                    p.severity,
                    message=f"Rank {rank} of {at.label} is a straggler: it {what} for {count} consecutive steps "
                    f"(step {step}), slowing every rank; check that rank's host (GPU clocks, thermal throttling, "
                    "data loader workers, noisy neighbours).",
                    evidence=ev,
                    ranks=(rank,),
                )
            )

    # ------------------------------------------------------------------- lagging

    def _lagging(self, rel: Released, at: StepContext, found: list[Finding], *, median_step: float) -> None:
        p = self.rules.rank_lagging
        threshold = p.skew_steps * median_step
        flagged: dict[int, float] = {}
        if median_step > 0 and rel.record["ts_last"] - rel.record["ts_first"] >= threshold:
            med_ts = median(rel.ts)
            for rank, t in zip(rel.ranks, rel.ts, strict=True):
                if threshold <= t - med_ts < MIN_OFFSET_S:  # further off: a host clock (clock_skew)
                    flagged[rank] = t - med_ts
        _bump(self.lag, flagged)
        if not p.enabled:
            return
        step = at.step
        for rank, skew in flagged.items():
            count = self.lag[rank]
            if count < p.persist_steps:
                continue
            found.append(
                at.finding(
                    "rank_lagging",
                    p.severity,
                    message=f"Rank {rank} of {at.label} stamps its events {fmt(skew)} s ({fmt(skew / median_step)} "
                    f"steps) after the other ranks for {count} consecutive steps (step {step}): check that host's "
                    "clock (NTP) and its producer's backlog or network.",
                    evidence={"ts_skew_s": skew, "median_step_time_s": median_step, "consecutive_steps": count},
                    ranks=(rank,),
                )
            )

    def on_late(self, rank: int, step: int, *, ts: float, last_released: int, label: str) -> list[Finding]:
        """A step event of ``rank`` for ``step``, stamped ``ts``, that arrived after its step was released
        (counted, not aggregated); the finding is placed at ``last_released``."""
        p = self.rules.rank_lagging
        count = self.late.get(rank, 0) + 1
        self.late[rank] = count
        if count < p.persist_steps or not p.enabled:
            return []
        at = StepContext(last_released, ts, False, label)
        return [
            at.finding(
                "rank_lagging",
                p.severity,
                message=f"Rank {rank} of {label} delivered its events for {count} consecutive steps after the other "
                f"ranks' steps were already closed (latest: step {step}): check that rank's producer backlog, "
                "network or broker connection.",
                evidence={"late_steps": count, "late_step": step, "last_released_step": last_released},
                ranks=(rank,),
            )
        ]

    def on_time(self, rank: int) -> None:
        if self.late:
            self.late.pop(rank, None)

    # ------------------------------------------------------------------- memory

    def _memory(self, rel: Released, at: StepContext, found: list[Finding]) -> None:
        p = self.rules.memory_pressure
        metrics = rel.record["metrics"]
        total_min = metrics["mem_total_mb"]["min"]
        if total_min > 0 and metrics["mem_peak_mb"]["max"] / total_min < p.warn_ratio:
            if self.mem:
                self.mem.clear()
            return
        flagged: dict[int, tuple[float, float, float]] = {}
        for rank, m in zip(rel.ranks, rel.metrics, strict=True):
            peak = m.get("mem_peak_mb")
            total = m.get("mem_total_mb")
            if peak is None or not total or total <= 0 or peak - peak != 0.0:
                continue
            ratio = peak / total
            if ratio >= p.warn_ratio:
                flagged[rank] = (ratio, peak, total)
        _bump(self.mem, flagged)
        if not p.enabled:
            return
        step = at.step
        for rank, (ratio, peak, total) in flagged.items():
            count = self.mem[rank]
            critical = ratio >= p.critical_ratio
            if not critical and count < p.persist_steps:
                continue
            found.append(
                at.finding(
                    "memory_pressure",
                    "critical" if critical else p.severity,
                    message=f"Rank {rank} of {at.label} peaked at {fmt(ratio * 100)}% of GPU memory ({fmt(peak)} of "
                    f"{fmt(total)} MB) at step {step}: it is close to out-of-memory, reduce the micro-batch or "
                    "sequence length, or enable activation checkpointing.",
                    evidence={"mem_peak_mb": peak, "mem_total_mb": total, "ratio": ratio, "consecutive_steps": count},
                    ranks=(rank,),
                )
            )

    def to_state(self) -> dict[str, Any]:
        return {k: {str(r): c for r, c in getattr(self, k).items()} for k in ("straggle", "lag", "late", "mem")}

    def load_state(self, s: dict[str, Any]) -> None:
        for k in ("straggle", "lag", "late", "mem"):
            setattr(self, k, {int(r): int(c) for r, c in s.get(k, {}).items()})
