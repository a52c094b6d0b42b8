"""Reading a test topic back and counting every seq: shared by the producer's real-broker tests.

Seqs count from 0 per incarnation (``inc``, one per process start of a rank),
so losses and duplicates are counted per ``(rank, inc)``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from rankstream.config import Settings
from rankstream.schema import decode_event


def consume(settings: Settings, done: Callable[[list[dict]], bool], timeout: float = 90.0) -> list[dict]:
    """Read the events topic from the beginning until ``done(events)`` (or ``timeout`` s: then the caller's
    assertions say what is missing)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.topics.events,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        **settings.kafka_python_kwargs(),
    )
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                events.extend(decode_event(rec.value) for rec in records)
            if done(events):
                break
    finally:
        consumer.close()
    return events


def inc_seq_problems(events: list[dict], run_id: str) -> dict[tuple[int, str], tuple[list[int], list[int]]]:
    """Per (rank, inc): (missing seqs below the highest seen, duplicated seqs)."""
    counts: dict[tuple[int, str], Counter] = {}
    for e in events:
        if e["run_id"] == run_id:
            counts.setdefault((e["rank"], e["inc"]), Counter())[e["seq"]] += 1
    out = {}
    for key, seen in counts.items():
        missing = [s for s in range(max(seen) + 1) if s not in seen]
        dups = sorted(s for s, n in seen.items() if n > 1)
        out[key] = (missing, dups)
    return out


def seq_problems(events: list[dict], run_id: str) -> dict[int, tuple[list[int], list[int]]]:
    """Per rank: (missing seqs, duplicated seqs), each counted within its incarnation, all incarnations together."""
    out: dict[int, tuple[list[int], list[int]]] = {}
    for (rank, _inc), (missing, dups) in sorted(inc_seq_problems(events, run_id).items()):
        before = out.setdefault(rank, ([], []))
        out[rank] = (before[0] + missing, before[1] + dups)
    return out


def finished(run_id: str, ranks: int, incs: int = 1) -> Callable[[list[dict]], bool]:
    """True once ``incs`` run_ends of every rank arrived (one per incarnation) and nothing below them is missing."""

    def check(events: list[dict]) -> bool:
        ends = {(e["rank"], e["inc"]) for e in events if e["run_id"] == run_id and e["kind"] == "run_end"}
        per_rank = Counter(rank for rank, _ in ends)
        if len(per_rank) < ranks or any(n < incs for n in per_rank.values()):
            return False
        return all(not missing for missing, _ in inc_seq_problems(events, run_id).values())

    return check
