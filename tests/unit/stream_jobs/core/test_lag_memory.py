"""Per-rank rules across cadences: sub-step rank_lagging, memory_pressure that ends when memory recovers."""

from __future__ import annotations

from typing import Any

from rankstream.dev.synthetic import Fault, generate_run
from rankstream.stream_jobs.core import Output
from tests.corekit import replay, reseq

WORLD = 2


def subsample(events: list[dict], cadence: int) -> list[dict]:
    """The run as logged every ``cadence`` steps."""
    return reseq([dict(e) for e in events if e["kind"] != "step" or e["step"] % cadence == 0])


def firing(out: Output, rule: str) -> list[dict[str, Any]]:
    """The alerts of ``rule`` that fired (not the messages that resolve them)."""
    return [a for a in out.alerts if a["rule"] == rule and a.get("state", "firing") == "firing"]


def test_a_rank_a_third_of_a_step_behind_is_lagging_at_any_cadence() -> None:
    for cadence in (1, 10):
        events = generate_run(
            "lag", 8, 1500, seed=2, faults=[Fault("lagging", 300, rank=3, duration=600, magnitude=0.33)]
        )
        out = replay(subsample(events, cadence))
        lag = firing(out, "rank_lagging")
        assert lag and {tuple(a["ranks"]) for a in lag} == {(3,)}, cadence
        assert 300 <= lag[0]["step"] <= 300 + 25 * cadence
        assert lag[0]["evidence"]["reading"] == "sub-step" and 0.25 <= lag[0]["evidence"]["skew_steps"] < 1.0
        assert {a["rule"] for a in out.alerts if a["severity"] != "info"} == {"rank_lagging"}


def test_normal_jitter_and_a_small_delay_are_not_lagging() -> None:
    for seed in range(3):
        fault = Fault("lagging", 300, rank=3, duration=400, magnitude=0.15)
        out = replay(generate_run("jit", 8, 800, seed=seed, faults=[fault]))
        assert "rank_lagging" not in {a["rule"] for a in out.alerts}, seed


def memory_run(peaks: dict[int, float]) -> list[dict]:
    """Rank 1's ``mem_peak_mb`` (the peak of each logging interval) at ``peaks`` (fraction of the device)."""
    events = generate_run("mem", WORLD, 1000, seed=5)
    for e in events:
        if e["kind"] == "step" and e["rank"] == 1 and e["step"] in peaks:
            e["metrics"]["mem_peak_mb"] = peaks[e["step"]] * e["metrics"]["mem_total_mb"]
    return events


def memory_alerts(out: Output) -> list[tuple[int, str, str]]:
    return [(a["step"], a["severity"], a.get("state", "firing")) for a in out.alerts if a["rule"] == "memory_pressure"]


def test_a_transient_memory_peak_warns_once_then_stops() -> None:
    out = replay(memory_run({s: 0.95 for s in range(100, 106)}))
    assert [(s, sev) for s, sev, state in memory_alerts(out) if state == "firing"] == [(102, "warning")]
    assert [a["ranks"] for a in firing(out, "memory_pressure")] == [[1]]


def test_memory_pressure_needs_a_sustained_pressure_again_after_recovery() -> None:
    # 100..105 high, 106..107 below (a dip shorter than recover_steps), 108 high: still the same pressure
    dip = {**{s: 0.95 for s in range(100, 106)}, 106: 0.5, 107: 0.5, 108: 0.95}
    count = [a["evidence"]["consecutive_steps"] for a in firing(replay(memory_run(dip)), "memory_pressure")]
    assert count == [3], "one alert (cooldown) for one pressure"
    # after a recovery (3 logged steps below), one step above is not a pressure; a new sustained one is
    again = {**{s: 0.95 for s in range(100, 106)}, 400: 0.95, **{s: 0.95 for s in range(600, 606)}}
    out = replay(memory_run(again))
    assert [a["step"] for a in firing(out, "memory_pressure")] == [102, 602]
    assert [a["evidence"]["consecutive_steps"] for a in firing(out, "memory_pressure")] == [3, 3]
