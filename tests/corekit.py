"""Helpers for tests of the pure core: replay a list of wire events as `rankstream replay` does."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from rankstream.schema import validate_event
from rankstream.stream_jobs.core import Engine, Output


def replay(events: Iterable[dict]) -> Output:
    """What `rankstream replay` computes for the same events (the expected output)."""
    engine = Engine()
    out = engine.process_many(validate_event(e) for e in events)
    out.extend(engine.finish())
    return out


def reseq(events: list[dict]) -> list[dict]:
    """Number each rank's events 0, 1, 2 ... in list order (after a test added or removed some)."""
    seq: Counter[int] = Counter()
    for e in events:
        e["seq"] = seq[e["rank"]]
        seq[e["rank"]] += 1
    return events


def logged_every(events: list[dict], cadence: int) -> list[dict]:
    """A synthetic run as its producer would send it logging every ``cadence`` steps (seq renumbered)."""
    seq: dict[int, int] = {}
    out = []
    for e in events:
        if e["kind"] == "step" and e["step"] % cadence:
            continue
        e = {**e, "seq": seq.get(e["rank"], 0)}
        seq[e["rank"]] = e["seq"] + 1
        out.append(e)
    return out
