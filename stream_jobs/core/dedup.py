"""Duplicate and loss detection by ``seq``: per rank incarnation, a contiguous floor plus a capped set above it.

A rank counts ``seq`` from 0 per incarnation (``inc``, one per process start): a repeat is a
duplicate, a gap a lost event. Gaps that never fill are given up (and remembered, so that a lost
event arriving very late is counted once and not taken for a duplicate).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

#: Given-up gaps remembered per rank incarnation (ranges of lost seqs), for late arrivals of lost events.
_GAPS_KEPT = 16


def dedup_key(ev: dict[str, Any]) -> Hashable:
    """Whose ``seq`` counter an event belongs to: its rank's incarnation (``inc``, one per process start),
    else the generation in its ``restart`` tag (older producers), else its rank."""
    rank = ev["rank"]
    inc = ev.get("inc")
    if inc:
        return (rank, inc)
    tags = ev["tags"]
    gen = tags.get("restart") if tags else None
    return rank if gen is None else (rank, gen)


class SeqDedup:
    """Seen (key, seq) pairs in bounded memory: a contiguous floor plus a capped set above it.

    ``key`` is :func:`dedup_key`: seq counts per rank incarnation.
    """

    __slots__ = ("ahead", "cap", "gaps", "handled", "next_seq", "refilled", "trust_first")

    def __init__(self, cap: int, trust_first: bool = False) -> None:
        self.cap = cap
        self.next_seq: dict[Any, int] = {}
        self.ahead: dict[Any, set[int]] = {}
        # In a log consumer that resumes from a committed offset, a rank's first
        # seq seen is its floor: earlier seqs were handled before the restart.
        self.trust_first = trust_first
        #: Restored from saved state: seqs up to this were handled by a previous owner. Only a
        #: duplicate test, not a floor: seqs just above it may be committed heartbeats never re-read.
        self.handled: dict[Any, int] = {}
        #: Seq ranges [lo, hi) given up as lost (the step after them was released without them).
        self.gaps: dict[Any, list[tuple[int, int]]] = {}
        #: Lost seqs that arrived after all (each counted once, then a duplicate).
        self.refilled: dict[Any, set[int]] = {}

    def seen(self, key: Any, seq: int) -> bool:
        """True if (key, seq) was seen before; records it otherwise."""
        nxt = self.next_seq.get(key)
        if nxt is None:
            done = self.handled.get(key)
            if done is not None and seq <= done:
                return not self._refill(key, seq)  # a lost seq given up by the previous owner may still come
            nxt = seq if self.trust_first else (0 if done is None else done + 1)
        if seq == nxt:
            nxt += 1
            above = self.ahead.get(key)
            if above:
                while nxt in above:
                    above.discard(nxt)
                    nxt += 1
            self.next_seq[key] = nxt
            return False
        if seq < nxt:
            return not self._refill(key, seq)
        above = self.ahead.setdefault(key, set())
        if seq in above:
            return True
        above.add(seq)
        if len(above) > self.cap:  # a gap that never fills (lost events): give it up
            nxt = min(above)
            while nxt in above:
                above.discard(nxt)
                nxt += 1
            self.next_seq[key] = nxt
        return False

    def _refill(self, key: Any, seq: int) -> bool:
        """A seq below the floor: True when it is a lost one arriving late for the first time."""
        gaps = self.gaps.get(key)
        if not gaps or not any(lo <= seq < hi for lo, hi in gaps):
            return False
        refilled = self.refilled.setdefault(key, set())
        if seq in refilled:
            return False
        if len(refilled) >= self.cap:
            refilled.clear()
        refilled.add(seq)
        return True

    def give_up_below(self, key: Any, seq: int) -> int:
        """Seqs of ``key`` missing below ``seq`` are lost: move the floor past them; returns how many."""
        nxt = self.next_seq.get(key)
        if nxt is None or seq < nxt:
            return 0
        above = self.ahead.get(key) or set()
        missing = sum(1 for s in range(nxt, seq) if s not in above) if seq - nxt <= 4 * self.cap else seq - nxt
        gaps = self.gaps.setdefault(key, [])
        gaps.append((nxt, seq))
        del gaps[:-_GAPS_KEPT]
        nxt = seq
        while nxt in above:
            nxt += 1
        self.next_seq[key] = nxt
        if above:
            self.ahead[key] = {s for s in above if s > nxt}
        return missing
