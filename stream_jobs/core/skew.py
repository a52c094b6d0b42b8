"""Host clock offsets inside one run: found from how each rank's ``ts`` compares with the others', corrected.

Why: every rank stamps its events with its host's clock. A host minutes off would make the aligner
release steps partial (its ``ts`` far from the others' at the same step), and the liveness rules
call healthy ranks silent (their ``ts`` minutes behind the skewed one's). Ranks of one synchronous
job run in lock step, so each rank's ``ts`` minus its arrival time is the same for every rank up
to delivery jitter; a rank whose difference stays a constant offset away from the run's consensus
(the median over ranks) has a skewed clock. Its later events are shifted by that offset before
anything else sees them, and the skew is reported once (``clock_skew``) with its offset.

Only offsets of at least ``min_offset_s`` are corrected (smaller ones are within what the grace
period and ``rank_lagging`` handle), and only once a rank's first ``samples`` differences agree
within ``tolerance_s``: a rank whose first events arrive late from a spool shows differences
that shrink as its backlog drains, not a constant offset, and is left alone.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from rankstream.stream_jobs.core.alerts import Finding, StepContext, fmt
from rankstream.stream_jobs.core.params import ClockSkewParams

#: Events per rank whose (ts - arrival) must agree before an offset is trusted ...
SAMPLES = 5
#: ... spread over at least this many seconds of arrival time (a burst from a spool is not a clock).
SPAN_S = 10.0
#: How far those differences may spread (seconds) and still be one constant offset.
TOLERANCE_S = 5.0
#: Offsets below this are not corrected (grace period and rank_lagging cover them).
MIN_OFFSET_S = 30.0
#: Events per rank of a launch looked at before giving up on ranks that never settle (a dead rank).
WATCH_EVENTS_PER_RANK = 200


class ClockSkew:
    """Per-rank clock offsets of one run; ``offset[rank]`` is subtracted from the rank's ``ts``."""

    __slots__ = ("budget", "decided", "incs", "latest", "offset", "pending", "settled", "watching")

    def __init__(self) -> None:
        self.offset: dict[int, float] = {}
        #: rank -> (arrival, ts - arrival) samples of a rank not settled yet, one per SPAN_S / SAMPLES s.
        self.pending: dict[int, list[tuple[float, float]]] = {}
        #: rank -> newest ts seen (as corrected), the run's own clock where the caller has no arrival time.
        self.latest: dict[int, float] = {}
        #: rank -> its settled difference (median of its samples), the consensus's inputs.
        self.settled: dict[int, float] = {}
        #: Ranks whose offset was decided (corrected or found fine); each is looked at once.
        self.decided: set[int] = set()
        #: False once every rank is decided or the run's first events are spent: nothing more to do.
        self.watching = True
        self.budget = 0
        #: rank -> the incarnation whose clock is described here.
        self.incs: dict[int, str] = {}

    def forget(self, rank: int, inc: str) -> None:
        """A new process (incarnation ``inc``) of ``rank``: its clock is estimated afresh."""
        self.incs[rank] = inc
        self.offset.pop(rank, None)
        self.settled.pop(rank, None)
        self.pending.pop(rank, None)
        self.decided.discard(rank)
        self.watching = True

    def reopen(self, world_size: int) -> None:
        """Watch the next events (a new launch or membership): ranks not decided yet may settle now."""
        self.watching = True
        self.budget = WATCH_EVENTS_PER_RANK * world_size

    def observe(self, rank: int, ts: float, arrival: float | None, world_size: int) -> list[tuple[int, float]]:
        """One event of ``rank`` stamped ``ts`` arrived at ``arrival`` (the caller's arrival clock, in the
        run's time; None: the median of the ranks' newest ``ts``, as in replay). Returns the ranks newly
        found skewed, with their offsets (seconds ahead; negative: behind)."""
        if not self.budget:
            self.reopen(world_size)
        self.budget -= 1
        if self.budget <= 0 or len(self.decided) >= world_size:
            self.watching = False
        if arrival is None:
            if ts > self.latest.get(rank, -math.inf):
                self.latest[rank] = ts
            arrival = statistics.median(self.latest.values())
        if rank in self.settled:
            return []
        samples = self.pending.setdefault(rank, [])
        if samples and arrival - samples[-1][0] < SPAN_S / SAMPLES:
            return []
        samples.append((arrival, ts - arrival))
        while len(samples) > SAMPLES and arrival - samples[1][0] >= SPAN_S:
            del samples[0]  # keep the shortest suffix that still spans SPAN_S
        if len(samples) < SAMPLES or arrival - samples[0][0] < SPAN_S:
            return []
        diffs = [diff for _, diff in samples]
        if max(diffs) - min(diffs) > TOLERANCE_S:
            return []  # not constant (yet): a backlog draining, or a clock being stepped
        del self.pending[rank]
        self.settled[rank] = statistics.median(diffs)
        if len(self.settled) < 3:
            return []  # no consensus yet; decided when more ranks have settled
        return self._decide()

    def _decide(self) -> list[tuple[int, float]]:
        """Decide every settled rank against the consensus; the ranks newly found skewed."""
        consensus = statistics.median(self.settled.values())
        found = []
        for rank, diff in self.settled.items():
            if rank in self.decided:
                continue
            self.decided.add(rank)
            offset = diff - consensus
            if abs(offset) >= MIN_OFFSET_S:
                self.offset[rank] = offset
                found.append((rank, offset))
        return found

    def to_state(self) -> dict[str, Any]:
        return {
            "offset": {str(rank): offset for rank, offset in self.offset.items()},
            "incs": {str(rank): inc for rank, inc in self.incs.items()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.offset = {int(rank): float(offset) for rank, offset in state.get("offset", {}).items()}
        self.incs = {int(rank): str(inc) for rank, inc in state.get("incs", {}).items()}
        self.decided |= set(self.offset)


def skew_finding(at: StepContext, params: ClockSkewParams, rank: int, offset: float, host: str) -> Finding:
    """The clock_skew finding of one rank found ``offset`` seconds off (reported once per incarnation)."""
    direction = "ahead of" if offset > 0 else "behind"
    where = f" ({host})" if host else ""
    return at.finding(
        "clock_skew",
        params.severity,
        message=f"The clock of rank {rank} of {at.label}{where} runs {fmt(abs(offset))} s {direction} the other "
        "ranks': its timestamps are corrected from now on; fix the host's time sync (NTP/chrony).",
        evidence={"offset_s": offset, "rank": rank},
        ranks=[rank],
    )
