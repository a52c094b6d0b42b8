"""One run, many lives (issue 18) on the pure core: relaunch under one run_id, elastic shrink and grow,
whole-job death, a skewed clock in another run of the same engine, a lost event.

Launches are cut out of synthetic runs the way they happen: a launch crashes (no run_end), the next one
starts later with new incarnation ids, seq from 0 and steps from its checkpoint.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rankstream.dev.synthetic import generate_run
from rankstream.schema import validate_event
from rankstream.stream_jobs.core import Engine
from tests.lifecycle_kit import LIVENESS_RULES, latest_by_step, launch


def run(events: list[dict[str, Any]], engine: Engine | None = None) -> tuple[list[dict], list[dict], Engine]:
    engine = engine or Engine()
    out = engine.process_many(validate_event(e) for e in events)
    end = engine.finish()
    return out.steps + end.steps, out.alerts + end.alerts, engine


def test_relaunch_under_one_run_id_keeps_both_launches_and_aligns_every_step() -> None:
    full = generate_run("relaunch", 8, 1000, heartbeat_every_s=10.0)
    first = launch(full, inc="a", to_step=600, ended=False)
    crash_ts = max(e["ts"] for e in first)
    second = launch(full, inc="b", from_step=500, start_ts=crash_ts + 30.0)
    steps, alerts, engine = run(first + second)

    assert engine.stats["duplicates"] == 0  # a new launch's seq 0.. is not a repeat of the old one's
    latest = latest_by_step(steps)
    assert sorted(latest) == list(range(1000))
    assert all(s["complete"] for s in latest.values()), [s["step"] for s in latest.values() if not s["complete"]]
    attempts = Counter(s["step"] for s in steps)
    assert {step for step, n in attempts.items() if n == 2} == set(range(500, 600))  # both attempts kept
    assert all(latest[step]["restart"] == 1 for step in range(500, 1000))
    assert not [a for a in alerts if a["rule"] in LIVENESS_RULES and a["severity"] != "info"], alerts
    # The loss going back to the checkpoint's value is the resume, not a rising loss.
    assert not [a for a in alerts if a["rule"] in ("loss_rising", "loss_plateau")], alerts


def test_a_preempted_run_relaunched_after_it_was_forgotten_continues_its_attempts() -> None:
    full = generate_run("preempted", 4, 800, heartbeat_every_s=10.0)
    first = launch(full, inc="a", to_step=600, ended=True)  # every rank sent run_end (SIGTERM)
    relaunch_ts = max(e["ts"] for e in first) + 300.0  # requeued 5 minutes later, from the step-500 checkpoint
    second = launch(full, inc="b", from_step=500, start_ts=relaunch_ts)
    other = generate_run("other", 2, 1500, step_time_s=0.5, start_ts=first[0]["ts"])  # keeps time moving
    both = sorted(first + second + other, key=lambda e: e["ts"])
    steps, alerts, engine = run(both)
    assert engine.stats["evicted_runs"] >= 1  # the first launch was forgotten after its run_end ...
    assert engine.stats["after_eviction"] == 0  # ... and its relaunch was not dropped
    mine = [s for s in steps if s["run_id"] == "preempted"]
    latest = latest_by_step(mine)
    assert sorted(latest) == list(range(800))
    assert all(latest[s]["restart"] == 1 and latest[s]["complete"] for s in range(500, 800))
    assert not [a for a in alerts if a["run_id"] == "preempted" and a["rule"] in LIVENESS_RULES], alerts


def test_a_dead_launchs_spool_delivered_after_the_relaunch_is_not_mixed_into_the_new_attempt() -> None:
    full = generate_run("spooled", 4, 800, heartbeat_every_s=10.0)
    first = launch(full, inc="a", to_step=600, ended=False)
    crash_ts = max(e["ts"] for e in first)
    backlog = [e for e in first if e["rank"] == 3 and e["kind"] == "step" and e["step"] >= 560]
    first = [e for e in first if e not in backlog]  # rank 3 spooled its last 40 steps and died
    second = launch(full, inc="b", from_step=500, start_ts=crash_ts + 30.0)
    # The relaunched rank 3 delivers its dead incarnation's spool once it is up (orphan replay).
    stream = first + second[:200] + backlog + second[200:]
    steps, _alerts, engine = run(stream)
    assert engine.stats["stale_events"] == len(backlog) == 40
    latest = latest_by_step(steps)
    assert all(latest[s]["restart"] == 1 and latest[s]["complete"] for s in range(500, 800))
    first_attempt = {s["step"]: s for s in steps if s["restart"] == 0}
    assert all(first_attempt[s]["missing_ranks"] == [3] for s in range(560, 600))


def test_elastic_shrink_and_grow_redeclare_membership_without_liveness_alerts() -> None:
    eight = generate_run("elastic", 8, 1000, heartbeat_every_s=10.0)
    six = generate_run("elastic", 6, 1000, heartbeat_every_s=10.0, seed=1)
    first = launch(eight, inc="a", to_step=400, ended=False)
    t1 = max(e["ts"] for e in first) + 20.0
    second = launch(six, inc="b", from_step=400, to_step=700, start_ts=t1, ended=False)
    t2 = max(e["ts"] for e in second) + 20.0
    third = launch(eight, inc="c", from_step=700, start_ts=t2)
    steps, alerts, engine = run(first + second + third)

    latest = latest_by_step(steps)
    assert sorted(latest) == list(range(1000))
    assert all(s["complete"] for s in latest.values())
    assert {latest[s]["world_size"] for s in range(400, 700)} == {6}
    assert {latest[s]["world_size"] for s in range(700, 1000)} == {8}
    assert not [a for a in alerts if a["rule"] in LIVENESS_RULES and a["severity"] != "info"], alerts
    changes = [a for a in alerts if a["rule"] == "membership_changed"]
    assert [a["severity"] for a in changes] == ["info", "info"]
    assert [(a["evidence"]["world_size_before"], a["evidence"]["world_size"]) for a in changes] == [(8, 6), (6, 8)]
    assert engine.stats["world_size_changes"] == 2


def test_whole_job_death_fires_run_lost_once_within_the_silent_threshold() -> None:
    full = generate_run("dead-job", 4, 400, heartbeat_every_s=10.0)
    died = launch(full, inc="a", to_step=300, ended=False)
    engine = Engine()
    out = engine.process_many(validate_event(e) for e in died)
    last_ts = max(e["ts"] for e in died)
    assert not [a for a in out.alerts if a["rule"] in LIVENESS_RULES]

    early = engine.advance(last_ts + 20.0)  # the default rank_silent threshold is 60 s
    assert not [a for a in early.alerts if a["rule"] == "run_lost"]
    lost = engine.advance(last_ts + 70.0).alerts + engine.advance(last_ts + 200.0).alerts
    (alert,) = [a for a in lost if a["rule"] == "run_lost"]
    assert alert["severity"] == "critical" and alert["ranks"] == [0, 1, 2, 3]
    assert alert["evidence"]["silent_s"] >= 60.0
    assert alert["step"] == 299


def test_a_clock_two_hours_ahead_in_another_run_changes_nothing_for_this_one() -> None:
    healthy = generate_run("healthy", 4, 600)
    alone_steps, alone_alerts, _ = run(healthy)
    skewed = [{**e, "ts": e["ts"] + 7200.0} for e in generate_run("skewed", 4, 600, seed=3)]
    # Arrival order is real time: the skewed run's events arrive interleaved with the healthy run's.
    both = sorted(healthy + skewed, key=lambda e: e["ts"] - (7200.0 if e["run_id"] == "skewed" else 0.0))
    steps, alerts, engine = run(both)
    assert engine.stats["after_eviction"] == 0
    assert [s for s in steps if s["run_id"] == "healthy"] == alone_steps
    assert [a for a in alerts if a["run_id"] == "healthy"] == alone_alerts


def test_a_lost_event_holds_later_steps_back_at_most_the_grace_period() -> None:
    events = generate_run("gap", 4, 300, step_time_s=0.5)
    lost = next(e for e in events if e["kind"] == "step" and e["rank"] == 2 and e["step"] == 100)
    kept = [e for e in events if e is not lost]
    engine = Engine()
    delays: dict[int, float] = {}
    for raw in kept:
        ev = validate_event(raw)
        for step in engine.process(ev).steps:
            delays[step["step"]] = ev["ts"] - step["ts_last"]
    grace = 30.0  # the default grace_min_s; the run's median step time (0.5 s) x grace_steps is below it
    assert max(delays.values()) <= grace + 1.0, max(delays.values())
    # Steps within one grace period after the gap (60 steps of 0.5 s) wait for it; once it is given up,
    # the steps after them flow at once again.
    later = [delays[s] for s in range(175, 290)]
    assert max(later) < 1.0, max(later)
    assert engine.stats["seq_gaps"] == 1


def _skewed_host(rank: int, offset_s: float, world: int = 4, steps: int = 400) -> list[dict[str, Any]]:
    """A healthy run in arrival (real-time) order whose ``rank`` stamps its events ``offset_s`` off."""
    events = generate_run(f"skew{rank}{offset_s:+.0f}", world, steps, heartbeat_every_s=5.0, incarnations=True)
    return [{**e, "ts": e["ts"] + offset_s} if e["rank"] == rank else e for e in events]


def test_a_host_clock_minutes_off_inside_a_run_is_corrected_and_reported_once() -> None:
    for rank, offset in ((2, 180.0), (1, -150.0)):
        steps, alerts, _engine = run(_skewed_host(rank, offset))
        latest = latest_by_step(steps)
        assert sorted(latest) == list(range(400))
        assert all(s["complete"] for s in latest.values()), [s["step"] for s in latest.values() if not s["complete"]]
        first = {s["step"]: s for s in steps if not s.get("revision")}  # as first released
        assert sum(not s["complete"] for s in first.values()) <= 3, "only the steps before the offset is known"
        assert not [a for a in alerts if a["rule"] in LIVENESS_RULES], alerts
        (skew,) = [a for a in alerts if a["rule"] == "clock_skew"]
        assert skew["ranks"] == [rank] and abs(skew["evidence"]["offset_s"] - offset) < 1.0, skew
        assert skew["severity"] == "warning"


def test_a_rank_whose_first_events_come_late_from_a_spool_is_not_taken_for_a_skewed_clock() -> None:
    events = generate_run("backlog", 4, 300, heartbeat_every_s=5.0, incarnations=True)
    rank3 = [e for e in events if e["rank"] == 3 and e["ts"] < events[0]["ts"] + 60.0]  # spooled for a minute
    rest = [e for e in events if e not in rank3]
    cut = next(i for i, e in enumerate(rest) if e["ts"] >= events[0]["ts"] + 60.0)
    steps, alerts, _engine = run(rest[:cut] + rank3 + rest[cut:])  # delivered in a burst a minute late
    assert not [a for a in alerts if a["rule"] == "clock_skew"], alerts
    latest = latest_by_step(steps)
    assert all(s["complete"] for s in latest.values())
