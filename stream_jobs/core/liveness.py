"""Time-based rules: rank_silent (a rank sends nothing), rank_hung (alive, but no step progress) and
run_lost (every rank that has not ended went quiet: the whole job died).

Thresholds scale with the run's median step time (a run with 2-minute steps is
not hung after 3 minutes); the clock is the run's event time, or the caller's
``advance(now)``, never the machine's.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from rankstream.stream_jobs.core.alerts import Finding, StepContext, fmt, rank_list
from rankstream.stream_jobs.core.params import RuleSet


class LivenessCheck(NamedTuple):
    """The outcome of :meth:`Liveness.check`."""

    #: Ranks found silent or hung: the aligner stops waiting for them.
    absent: set[int]
    #: rank_silent / rank_hung / run_lost findings, in that order.
    findings: list[Finding]


class Liveness:
    """When each rank was last heard from and last made step progress, in event time."""

    __slots__ = ("ended", "first_ts", "last_step", "last_ts", "progress_ts", "rules", "world_size")

    def __init__(self, world_size: int, first_ts: float, rules: RuleSet) -> None:
        self.rules = rules
        self.world_size = world_size
        self.first_ts = first_ts
        self.last_ts = [first_ts] * world_size
        self.progress_ts = [first_ts] * world_size
        self.last_step = [-1] * world_size
        self.ended: set[int] = set()

    def resize(self, world_size: int, ts: float) -> None:
        """Elastic training: ranks beyond the new world size are forgotten, new ranks start now."""
        old = self.world_size
        if world_size > old:
            grow = world_size - old
            self.last_ts.extend([ts] * grow)
            self.progress_ts.extend([ts] * grow)
            self.last_step.extend([-1] * grow)
        else:
            del self.last_ts[world_size:]
            del self.progress_ts[world_size:]
            del self.last_step[world_size:]
            self.ended = {r for r in self.ended if r < world_size}
        self.world_size = world_size

    def seen(self, rank: int, ts: float, step: int, progress_kind: bool) -> None:
        """An event of ``rank``; ``progress_kind``: its ``step`` counts as progress (step, heartbeat, eval)."""
        if ts > self.last_ts[rank]:
            self.last_ts[rank] = ts
        if progress_kind and step > self.last_step[rank]:
            self.last_step[rank] = step
            if ts > self.progress_ts[rank]:
                self.progress_ts[rank] = ts

    def lost_after(self, median_step: float) -> float:
        """Seconds of event time without any event from any rank after which the run is lost."""
        p = self.rules.run_lost
        return max(p.min_s, p.steps * median_step)

    def thresholds(self, median_step: float) -> tuple[float, float]:
        """Seconds of event time after which a rank is silent, and after which it is hung."""
        ps = self.rules.rank_silent
        ph = self.rules.rank_hung
        return max(ps.min_s, ps.steps * median_step), max(ph.min_s, ph.steps * median_step)

    def check(self, *, clock: float, median_step: float, step: int, started: bool, label: str) -> LivenessCheck:
        """rank_silent / rank_hung as of ``clock``, found at ``step``; ``started``: a step was released."""
        at = StepContext(step, clock, False, label)
        found: list[Finding] = []
        silent_after, hung_after = self.thresholds(median_step)
        silent: list[int] = []
        alive_ranks: list[int] = []
        for rank in range(self.world_size):
            if rank in self.ended:
                continue
            if clock - self.last_ts[rank] > silent_after:
                silent.append(rank)
            else:
                alive_ranks.append(rank)
        alive = len(alive_ranks)
        hung: list[int] = []
        if started and alive_ranks:
            newest = max(self.progress_ts[r] for r in alive_ranks)
            if clock - newest > hung_after:  # nobody progresses: the whole job is stuck
                hung = alive_ranks
            else:  # a rank that stopped while the others moved on
                top = max(self.last_step[r] for r in alive_ranks)
                hung = [r for r in alive_ranks if clock - self.progress_ts[r] > hung_after and self.last_step[r] < top]
        if silent and alive:
            ps = self.rules.rank_silent
            if ps.enabled:
                ages = {str(r): clock - self.last_ts[r] for r in silent}
                quiet = max(ages.values())
                found.append(
                    at.finding(
                        "rank_silent",
                        ps.severity,
                        message=f"Rank(s) {rank_list(silent)} of {label} sent nothing for {fmt(quiet)} s while "
                        f"{alive} other rank(s) are alive: the process or its host has probably died, check its logs "
                        "and node, the job will hang at the next collective.",
                        evidence={
                            "silent_s": ages,
                            "threshold_s": silent_after,
                            "alive_ranks": alive,
                            "median_step_time_s": median_step,
                        },
                        ranks=silent,
                    )
                )
        else:
            silent = []
        if hung:
            ph = self.rules.rank_hung
            if ph.enabled:
                stalled = {str(r): clock - self.progress_ts[r] for r in hung}
                longest = max(stalled.values())
                scope = "the whole job" if len(hung) == alive else f"rank(s) {rank_list(hung)}"
                found.append(
                    at.finding(
                        "rank_hung",
                        ph.severity,
                        message=f"{scope[0].upper()}{scope[1:]} of {label} still send heartbeats but completed no "
                        f"step for {fmt(longest)} s ({fmt(longest / median_step) if median_step else '?'} median "
                        "steps): it is likely stuck in a collective or data loading, dump its stacks (py-spy dump) "
                        "before restarting.",
                        evidence={
                            "stalled_s": stalled,
                            "last_step": {str(r): self.last_step[r] for r in hung},
                            "threshold_s": hung_after,
                            "median_step_time_s": median_step,
                        },
                        ranks=hung,
                    )
                )
        not_ended = [r for r in range(self.world_size) if r not in self.ended]
        if not_ended and not alive:
            lost = self._lost(clock, median_step, not_ended, at)
            if lost is not None:
                found.append(lost)
        return LivenessCheck(set(silent) | set(hung), found)

    def _lost(self, clock: float, median_step: float, quiet: list[int], at: StepContext) -> Finding | None:
        """run_lost when no rank that has not ended was heard from for the run's threshold."""
        p = self.rules.run_lost
        newest = max(self.last_ts[r] for r in quiet)
        silence = clock - newest
        lost_after = self.lost_after(median_step)
        if not p.enabled or silence <= lost_after:
            return None
        ended = len(self.ended)
        return at.finding(
            "run_lost",
            p.severity,
            message=f"Every rank of {at.label} went quiet {fmt(silence)} s ago without run_end"
            + (f" ({ended} rank(s) had ended)" if ended else "")
            + ": the whole job has probably died (node failure, OOM kill, preemption) or lost its network; "
            "check the scheduler and the hosts, and resume from the last checkpoint.",
            evidence={
                "silent_s": silence,
                "threshold_s": lost_after,
                "last_seen_s": {str(r): clock - self.last_ts[r] for r in quiet},
                "last_step": max(self.last_step[r] for r in quiet),
                "ended_ranks": sorted(self.ended),
                "median_step_time_s": median_step,
            },
            ranks=quiet,
        )

    def to_state(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "first_ts": self.first_ts,
            "last_ts": list(self.last_ts),
            "progress_ts": list(self.progress_ts),
            "last_step": list(self.last_step),
            "ended": sorted(self.ended),
        }

    def load_state(self, s: dict[str, Any]) -> None:
        self.world_size = int(s["world_size"])
        self.first_ts = float(s["first_ts"])
        self.last_ts = [float(v) for v in s["last_ts"]]
        self.progress_ts = [float(v) for v in s["progress_ts"]]
        self.last_step = [int(v) for v in s["last_step"]]
        self.ended = {int(r) for r in s.get("ended", [])}
