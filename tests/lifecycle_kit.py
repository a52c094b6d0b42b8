"""Launches of one run, cut out of synthetic runs the way they happen (issue 18): a launch crashes (no
run_end) or stops cleanly, the next one starts later with new incarnation ids, seq from 0 and steps from
its checkpoint. Shared by the pure-core tests and the real-broker tests of the same scenarios.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

#: Rules about a rank or run not keeping up or going quiet (none may fire at warning+ on a healthy run).
LIVENESS_RULES = {"rank_silent", "rank_hung", "rank_lagging", "run_lost"}


def launch(
    events: list[dict[str, Any]],
    *,
    inc: str,
    from_step: int = 0,
    to_step: int | None = None,
    start_ts: float | None = None,
    ended: bool = True,
) -> list[dict[str, Any]]:
    """The events of one launch: run_start, steps/heartbeats/evals in [from_step, to_step), run_end if ``ended``.

    seq restarts at 0 per rank, every event carries ``inc`` (+ rank), and times are shifted so the launch's
    run_start is at ``start_ts``.
    """
    starts = [e for e in events if e["kind"] == "run_start"]
    body = [
        e
        for e in events
        if e["kind"] in ("step", "heartbeat", "eval")
        and e["step"] >= from_step
        and (to_step is None or e["step"] < to_step)
    ]
    ends = [e for e in events if e["kind"] == "run_end"] if ended and to_step is None else []
    if ended and to_step is not None:  # the launch stopped cleanly at to_step (e.g. SIGTERM, preemption)
        last_ts = max(e["ts"] for e in body)
        ends = [{**e, "kind": "run_end", "step": to_step - 1, "ts": last_ts + 0.5, "metrics": {}} for e in starts]
    first_body_ts = min(e["ts"] for e in body)
    shift = 0.0 if start_ts is None else start_ts + 5.0 - first_body_ts
    out = []
    seq: Counter[int] = Counter()
    for e in starts:
        out.append({**e, "ts": first_body_ts - 5.0 + shift + e["rank"] * 1e-3, "step": from_step})
    out += [{**e, "ts": e["ts"] + shift} for e in body + ends]
    out.sort(key=lambda e: (e["kind"] != "run_start", e["ts"]))
    for e in out:
        e["seq"] = seq[e["rank"]]
        seq[e["rank"]] += 1
        e["inc"] = f"{inc}{e['rank']}"
    return out


def latest_by_step(steps: list[dict]) -> dict[int, dict]:
    """Each step's latest attempt (highest ``restart``), in its latest version (highest ``revision``, else the
    last one published)."""
    latest: dict[int, dict] = {}
    for s in steps:
        old = latest.get(s["step"])
        if old is None or _version(s) >= _version(old):
            latest[s["step"]] = s
    return latest


def _version(step: dict) -> tuple[int, int]:
    return step["restart"], step.get("revision", 0)
