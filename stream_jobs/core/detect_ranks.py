"""Per-rank rules over aligned steps: straggler, rank_lagging (stamp skew, late arrival), memory_pressure.

In synchronous training every rank's ``step_time_s`` is about the same (fast
ranks wait in the all-reduce), so a slow rank is found from its own
``compute_time_s`` + ``data_time_s`` (falling back to how late its events are
stamped). Each rule needs several consecutive logged steps, so one hiccup is
not an alert; persistence counts logged steps (the points a run sends), so a
run logged every 10 steps needs the same number of points as one logged every step.
"""

from __future__ import annotations

from typing import Any

from rankstream.stream_jobs.core.aggregate import median
from rankstream.stream_jobs.core.alerts import Finding, StepContext, fmt
from rankstream.stream_jobs.core.align import Released
from rankstream.stream_jobs.core.params import RuleSet
from rankstream.stream_jobs.core.peers import peer_medians
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
        self.sublag: dict[int, int] = {}
        self.late: dict[int, int] = {}
        self.mem: dict[int, int] = {}
        #: rank -> consecutive logged steps below `warn_ratio` while its pressure count is open.
        self.mem_below: dict[int, int] = {}

    # ----------------------------------------------------------------- straggler

    def on_step(self, rel: Released, *, median_step: float, warmup: bool, label: str) -> list[Finding]:
        """Score one released step; ``median_step`` is the run's median step time (s)."""
        rec = rel.record
        metrics = rec["metrics"]
        at = StepContext(rec["step"], rec["ts_last"], warmup, label)
        found: list[Finding] = []
        if len(rel.ranks) >= 2:
            slow = self._straggler(rel, at, found, median_step=median_step)
            self._lagging(rel, at, found, median_step=median_step, stragglers=slow)
        if "mem_peak_mb" in metrics and "mem_total_mb" in metrics:
            self._memory(rel, at, found)
        elif self.mem:
            self.mem.clear()
        return found

    def _straggler(
        self, rel: Released, at: StepContext, found: list[Finding], *, median_step: float
    ) -> dict[int, dict[str, Any]]:
        """straggler; returns the ranks found slow at this step (their lateness is not lag)."""
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
                meds = peer_medians(own, rel.peers)  # under PP / TP: a rank against its peers only
                min_extra = max(p.min_extra_frac * median_step, p.min_extra_s)
                for rank, v, m, med in zip(rel.ranks, own, rel.metrics, meds, strict=True):
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
            for rank, t, med_ts in zip(rel.ranks, rel.ts, peer_medians(rel.ts, rel.peers), strict=True):
                skew = t - med_ts
                if p.skew_frac * median_step <= skew < MIN_OFFSET_S:  # further off: a clock (clock_skew)
                    flagged[rank] = {"ts_skew_s": skew, "median_step_time_s": median_step, "signal": "ts skew"}
        _bump(self.straggle, flagged)
        if not p.enabled:
            return flagged
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
        return flagged

    # ------------------------------------------------------------------- lagging

    def _lagging(
        self, rel: Released, at: StepContext, found: list[Finding], *, median_step: float, stragglers: dict[int, Any]
    ) -> None:
        """A rank stamped a step or more behind (``persist_steps``), or a sizeable fraction of a step behind
        for much longer (``sub_step_persist``): a clock or delivery problem, not compute (stragglers excluded)."""
        p = self.rules.rank_lagging
        threshold = p.skew_steps * median_step
        sub = min(p.sub_step_skew, p.skew_steps) * median_step
        flagged: dict[int, float] = {}
        behind: dict[int, float] = {}
        if median_step > 0 and rel.record["ts_last"] - rel.record["ts_first"] >= sub:
            med_ts = median(rel.ts)
            for rank, t in zip(rel.ranks, rel.ts, strict=True):
                skew = t - med_ts
                if skew >= MIN_OFFSET_S:  # further off: a host clock (clock_skew)
                    continue
                if skew >= threshold:
                    flagged[rank] = skew
                elif skew >= sub and rank not in stragglers:
                    behind[rank] = skew
        _bump(self.lag, flagged)
        _bump(self.sublag, behind)
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
        for rank, skew in behind.items():
            count = self.sublag[rank]
            if count < p.sub_step_persist:
                continue
            found.append(
                at.finding(
                    "rank_lagging",
                    p.severity,
                    message=f"Rank {rank} of {at.label} stamps its events {fmt(skew)} s ({fmt(skew / median_step)} "
                    f"of a step) after the other ranks for {count} consecutive logged steps (step {step}) while its "
                    "own compute is not slow: check that host's clock (NTP) and its producer's backlog or network.",
                    evidence={
                        "ts_skew_s": skew,
                        "skew_steps": skew / median_step,
                        "median_step_time_s": median_step,
                        "consecutive_steps": count,
                        "reading": "sub-step",
                    },
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
        """memory_pressure with hysteresis: a rank's episode starts at ``persist_steps`` logged steps at or
        above ``warn_ratio`` (at once when critical) and is reported at every logged step above while it
        lasts (the alert stays open; cooldown keeps it quiet); a dip below shorter than ``recover_steps``
        does not restart the count, ``recover_steps`` logged steps below end it (the alert resolves and a
        new one needs a new sustained pressure)."""
        p = self.rules.memory_pressure
        metrics = rel.record["metrics"]
        total_min = metrics["mem_total_mb"]["min"]
        flagged: dict[int, tuple[float, float, float]] = {}
        if total_min <= 0 or metrics["mem_peak_mb"]["max"] / total_min >= p.warn_ratio:
            for rank, m in zip(rel.ranks, rel.metrics, strict=True):
                peak = m.get("mem_peak_mb")
                total = m.get("mem_total_mb")
                if peak is None or not total or total <= 0 or peak - peak != 0.0:
                    continue
                ratio = peak / total
                if ratio >= p.warn_ratio:
                    flagged[rank] = (ratio, peak, total)
        if self.mem:
            self._recovering(set(rel.ranks) - flagged.keys(), p.recover_steps)
        for rank in flagged:
            self.mem[rank] = self.mem.get(rank, 0) + 1
            self.mem_below.pop(rank, None)
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

    def _recovering(self, ranks: set[int], recover_steps: int) -> None:
        """``ranks`` reported memory below the threshold at this step: a rank's pressure count ends after
        ``recover_steps`` such logged steps in a row."""
        for rank in ranks:
            if rank not in self.mem:
                continue
            below = self.mem_below.get(rank, 0) + 1
            if below >= recover_steps:
                self.mem_below.pop(rank, None)
                del self.mem[rank]
            else:
                self.mem_below[rank] = below

    _COUNTERS = ("straggle", "lag", "sublag", "late", "mem", "mem_below")

    def to_state(self) -> dict[str, Any]:
        return {k: {str(r): c for r, c in getattr(self, k).items()} for k in self._COUNTERS}

    def load_state(self, s: dict[str, Any]) -> None:
        for k in self._COUNTERS:
            setattr(self, k, {int(r): int(c) for r, c in s.get(k, {}).items()})
