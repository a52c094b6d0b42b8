"""Liveness called directly: silent and hung ranks are named after their thresholds, and not before."""

from __future__ import annotations

import pytest

from rankstream.stream_jobs.core.liveness import Liveness
from rankstream.stream_jobs.core.params import RuleSet

LABEL = "run r (r)"


def alive_until(liveness: Liveness, ranks: list[int], ts: float, step: int) -> None:
    for rank in ranks:
        liveness.seen(rank, ts, step, True)


def test_thresholds_scale_with_the_median_step_time() -> None:
    liveness = Liveness(2, 0.0, RuleSet())
    assert liveness.thresholds(0.5) == (60.0, 180.0)  # min_s wins for short steps
    assert liveness.thresholds(10.0) == (200.0, 500.0)  # 20 and 50 median steps
    tuned = Liveness(2, 0.0, RuleSet().with_changes({"rank_silent": {"min_s": 5.0}}))
    assert tuned.thresholds(0.1) == (5.0, 180.0)


def test_a_silent_rank_is_named_after_its_threshold_and_not_before() -> None:
    liveness = Liveness(3, 0.0, RuleSet())
    alive_until(liveness, [0, 1], 60.0, 100)
    before = liveness.check(clock=60.0, median_step=0.5, step=100, started=True, label=LABEL)
    assert before.absent == set() and before.findings == []
    after = liveness.check(clock=60.5, median_step=0.5, step=101, started=True, label=LABEL)
    assert after.absent == {2}
    (found,) = after.findings
    assert (found.rule, found.severity, found.step, found.ranks, found.ts) == (
        "rank_silent",
        "critical",
        101,
        (2,),
        60.5,
    )
    assert found.evidence == {"silent_s": {"2": 60.5}, "threshold_s": 60.0, "alive_ranks": 2, "median_step_time_s": 0.5}
    assert found.message.startswith(f"Rank(s) 2 of {LABEL} sent nothing for 60.5 s while 2 other rank(s) are alive")


def test_ended_ranks_are_not_silent_and_nobody_alive_is_run_lost_not_rank_silent() -> None:
    liveness = Liveness(3, 0.0, RuleSet())
    alive_until(liveness, [0, 1], 100.0, 10)
    liveness.ended.add(2)
    assert liveness.check(clock=100.0, median_step=0.5, step=10, started=True, label=LABEL).absent == set()
    everyone_quiet = Liveness(2, 0.0, RuleSet())
    check = everyone_quiet.check(clock=1000.0, median_step=0.5, step=0, started=False, label=LABEL)
    assert check.absent == set(), "no rank alive: nobody to compare with, nothing to stop waiting for"
    assert [(f.rule, f.severity, f.ranks) for f in check.findings] == [("run_lost", "critical", (0, 1))]
    assert check.findings[0].evidence["silent_s"] == 1000.0


def test_run_lost_waits_for_its_threshold_and_skips_ended_ranks() -> None:
    liveness = Liveness(3, 0.0, RuleSet())
    alive_until(liveness, [0, 1, 2], 100.0, 10)
    liveness.ended.add(2)  # rank 2 finished; ranks 0 and 1 died
    early = liveness.check(clock=159.0, median_step=0.5, step=10, started=True, label=LABEL)
    assert [f.rule for f in early.findings] == []
    late = liveness.check(clock=161.0, median_step=0.5, step=10, started=True, label=LABEL)
    (lost,) = late.findings
    assert (lost.rule, lost.ranks, lost.evidence["ended_ranks"]) == ("run_lost", (0, 1), [2])
    liveness.ended.update({0, 1})
    done = liveness.check(clock=1000.0, median_step=0.5, step=10, started=True, label=LABEL)
    assert done.findings == [], "a run whose every rank ended is finished, not lost"


def test_a_disabled_rule_still_stops_the_wait() -> None:
    liveness = Liveness(2, 0.0, RuleSet().with_changes({"rank_silent": {"enabled": False}}))
    alive_until(liveness, [0], 61.0, 5)
    check = liveness.check(clock=61.0, median_step=0.5, step=5, started=True, label=LABEL)
    assert check.absent == {1} and check.findings == []


def test_a_rank_stuck_while_the_others_progress_is_hung() -> None:
    liveness = Liveness(3, 0.0, RuleSet())
    liveness.seen(1, 10.0, 3, True)
    for ts in (100.0, 150.0, 190.0):
        alive_until(liveness, [0, 2], ts, int(ts))
        liveness.seen(1, ts, 3, True)  # heartbeats at its old step: alive, no progress
    early = liveness.check(clock=190.0, median_step=0.5, step=190, started=True, label=LABEL)
    assert early.absent == set(), "180 s without progress is not over the threshold"
    late = liveness.check(clock=190.5, median_step=0.5, step=190, started=True, label=LABEL)
    assert late.absent == {1}
    (found,) = late.findings
    assert (found.rule, found.severity, found.ranks) == ("rank_hung", "critical", (1,))
    assert found.evidence["stalled_s"] == {"1": 180.5}
    assert found.evidence["last_step"] == {"1": 3}
    assert found.evidence["threshold_s"] == 180.0
    assert found.message.startswith(f"Rank(s) 1 of {LABEL} still send heartbeats but completed no step for 180.5 s")


def test_the_whole_job_stalled_is_hung_only_once_a_step_was_released() -> None:
    liveness = Liveness(2, 0.0, RuleSet())
    alive_until(liveness, [0, 1], 10.0, 7)
    for ts in (60.0, 120.0, 190.0):
        for rank in (0, 1):
            liveness.seen(rank, ts, 7, True)
    not_started = liveness.check(clock=191.0, median_step=1.0, step=7, started=False, label=LABEL)
    assert not_started.absent == set() and not_started.findings == []
    check = liveness.check(clock=191.0, median_step=1.0, step=7, started=True, label=LABEL)
    assert check.absent == {0, 1}
    (found,) = check.findings
    assert found.ranks == (0, 1)
    assert found.message.startswith(f"The whole job of {LABEL} still send heartbeats")
    assert found.evidence["stalled_s"] == {"0": pytest.approx(181.0), "1": pytest.approx(181.0)}


def test_resize_forgets_ranks_beyond_and_new_ranks_start_now() -> None:
    liveness = Liveness(3, 0.0, RuleSet())
    liveness.ended.add(2)
    liveness.resize(2, 50.0)
    assert liveness.world_size == 2 and liveness.ended == set() and len(liveness.last_ts) == 2
    liveness.resize(4, 70.0)
    assert liveness.last_ts[2:] == [70.0, 70.0] and liveness.last_step[2:] == [-1, -1]
