"""One shared worker (`--team '*'`) for every team's `<prefix>.<team>.events`, on the real broker.

Each team's topic is a lane of its own: two teams using the SAME run_id get exactly their own aligned steps
and alerts on their own topics, a run_start claiming another team is corrected (the topic says the team),
a team whose topics appear while the worker runs is picked up, and a restarted worker resumes each team
from its committed offsets and its own state topic.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.dev.synthetic import Fault, generate_run
from rankstream.kafka_admin import ensure_topics
from tests.integration.conftest import free_port
from tests.integration.streamkit import (
    WorkerProcess,
    collect,
    produce,
    replay,
    step_keys,
    wait_committed,
    wait_group_stable,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RUN_ID = "shared-run"  # every team uses it


def _team(kafka: Settings, team: str) -> Settings:
    """The settings of one team's topics ``<prefix>.<team>.*``, created."""
    settings = kafka.with_overrides(topic_prefix=f"{kafka.topic_prefix}.{team}")
    ensure_topics(settings)
    return settings


def _claiming(events: list[dict], team: str) -> list[dict]:
    """``events`` whose run_start claims ``team`` in meta."""
    return [{**e, "meta": {**e["meta"], "team": team}} if e["kind"] == "run_start" else e for e in events]


def _shared_worker(kafka: Settings, log: Path, *extra: str) -> WorkerProcess:
    return WorkerProcess(kafka, log, extra_args=["--team", "*", "--topic-refresh-seconds", "2", *extra])


def _scrape(port: int) -> dict[str, float]:
    """The worker's unlabelled samples on /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {
        name: float(value)
        for name, value in (line.split(" ", 1) for line in lines if line and not line.startswith("#"))
        if "{" not in name
    }


def _assert_own_steps(team: Settings, expected: list[dict], timeout_s: float = 120.0) -> list[dict]:
    """``team``'s steps topic carries exactly ``expected``'s aligned steps (keys once each, loss means)."""
    want = step_keys(expected)
    steps = collect(team, team.topics.steps, lambda r: step_keys(r) >= want, timeout_s)
    assert step_keys(steps) == want, f"{team.topic_prefix}: {len(step_keys(steps))} of {len(want)} steps"
    by_key = {(s["run_id"], s["step"]): s for s in steps}
    for step in expected:
        got = by_key[(step["run_id"], step["step"])]["metrics"]["loss"]["mean"]
        assert got == pytest.approx(step["metrics"]["loss"]["mean"]), (team.topic_prefix, step["step"])
    return steps


def _alerts(team: Settings, want_ids: set[str], timeout_s: float = 60.0) -> list[dict]:
    return collect(team, team.topics.alerts, lambda r: {a["alert_id"] for a in r} >= want_ids, timeout_s)


def test_two_teams_with_one_run_id_get_their_own_steps_and_alerts_and_a_new_team_is_picked_up(
    kafka: Settings, tmp_path: Path
) -> None:
    a, b = _team(kafka, "a"), _team(kafka, "b")
    events_a = generate_run(RUN_ID, world_size=4, steps=120, faults=[Fault("nan_loss", step=80)], seed=1, team="a")
    # team b's job claims to be team a: the worker must file it under b, the topic's team
    events_b = generate_run(RUN_ID, world_size=4, steps=120, faults=[Fault("loss_spike", step=90)], seed=2, team="a")
    expected_a, expected_b = replay(events_a), replay(_claiming(events_b, "b"))
    assert "nonfinite_loss" in {x["rule"] for x in expected_a.alerts}
    assert "nonfinite_loss" not in {x["rule"] for x in expected_b.alerts} and expected_b.alerts
    produce(a, events_a)
    produce(b, events_b)
    port = free_port()
    worker = _shared_worker(kafka, tmp_path / "worker.log", "--metrics-port", str(port))
    try:
        _assert_own_steps(a, expected_a.steps)
        _assert_own_steps(b, expected_b.steps)
        alerts_a = _alerts(a, {x["alert_id"] for x in expected_a.alerts})
        alerts_b = _alerts(b, {x["alert_id"] for x in expected_b.alerts})
        # a team whose topics appear while the worker runs: found, processed from its first event
        c = _team(kafka, "c")
        events_c = generate_run(RUN_ID, world_size=2, steps=40, seed=3, team="c")
        produce(c, events_c)
        _assert_own_steps(c, replay(events_c).steps, timeout_s=90)
        samples = _scrape(port)
    finally:
        assert worker.stop() == 0, worker.log()
    assert {x["alert_id"] for x in alerts_a} == {x["alert_id"] for x in expected_a.alerts}, worker.log()
    assert {x["alert_id"] for x in alerts_b} == {x["alert_id"] for x in expected_b.alerts}, worker.log()
    assert {x["team"] for x in alerts_a} == {"a"}
    assert {x["team"] for x in alerts_b} == {"b"}, "the forged meta team must not reach b's alerts"
    assert "nonfinite_loss" not in {x["rule"] for x in alerts_b}
    claims = sum(1 for e in events_b if e["kind"] == "run_start")  # one per rank, each claiming team a
    assert samples["rankstream_worker_team_corrected_total"] == claims
    assert samples["rankstream_worker_lanes"] == 3


def test_a_restarted_shared_worker_resumes_every_team_with_no_gap_no_duplicate_and_its_detector_state(
    kafka: Settings, tmp_path: Path
) -> None:
    """SIGTERM after the first half; the loss spike of each team's second half is detectable only with the
    window built from its first half, so it proves each team's state came back from its own state topic."""
    teams = {name: _team(kafka, name) for name in ("a", "b")}
    runs = {
        name: generate_run(RUN_ID, world_size=4, steps=300, faults=[Fault("loss_spike", step=160 + 20 * i)],
                           seed=10 + i, team=name)
        for i, name in enumerate(teams)
    }  # fmt: skip
    expected = {name: replay(events) for name, events in runs.items()}
    assert all({x["rule"] for x in e.alerts} >= {"loss_spike"} for e in expected.values())
    first = {n: [e for e in ev if e["kind"] == "run_start" or 0 <= e["step"] < 150] for n, ev in runs.items()}
    second = {n: [e for e in ev if not (e["kind"] == "run_start" or 0 <= e["step"] < 150)] for n, ev in runs.items()}
    group = f"{kafka.topic_prefix}.teams-stream"
    for name, team in teams.items():
        produce(team, first[name])
    worker = _shared_worker(kafka, tmp_path / "w1.log")
    try:
        for name, team in teams.items():
            half = {k for k in step_keys(expected[name].steps) if k[1] < 149}
            collect(team, team.topics.steps, lambda r, half=half: step_keys(r) >= half, 120)
            # most of the first half committed: the restart resumes mid-stream, not from the beginning
            wait_committed(kafka, group, team.topics.events, len(first[name]) * 3 // 4)
    finally:
        assert worker.stop() == 0, worker.log()
    for name, team in teams.items():
        produce(team, second[name])
    restarted = _shared_worker(kafka, tmp_path / "w2.log")
    try:
        for name, team in teams.items():
            steps = _assert_own_steps(team, expected[name].steps, timeout_s=150)
            published = Counter((s["run_id"], s["step"]) for s in steps)
            again = sorted(k for k, n in published.items() if n > 1)
            assert not again, f"team {name}: {len(again)} steps published twice, e.g. {again[:5]}"
            want = {x["alert_id"] for x in expected[name].alerts}
            alerts = _alerts(team, want)
            assert {x["alert_id"] for x in alerts} == want, restarted.log()
            assert {x["team"] for x in alerts} == {name}
    finally:
        assert restarted.stop() == 0, restarted.log()


def test_two_shared_workers_split_the_teams_partitions_and_one_takes_over_when_the_other_is_killed(
    kafka: Settings, tmp_path: Path
) -> None:
    teams = {name: _team(kafka, name) for name in ("a", "b")}
    runs = {
        name: [generate_run(f"run-{i}", world_size=4, steps=160, seed=20 + i, team=name) for i in range(3)]
        for name in teams
    }
    expected = {name: replay([e for run in rs for e in run]) for name, rs in runs.items()}
    group = f"{kafka.topic_prefix}.teams-stream"
    first_half = {name: [e for run in rs for e in run[: len(run) // 2]] for name, rs in runs.items()}
    for name, team in teams.items():
        produce(team, first_half[name])
    first = _shared_worker(kafka, tmp_path / "w1.log")
    second: WorkerProcess | None = None
    try:
        for name, team in teams.items():  # the first worker got going on every team alone
            wait_committed(kafka, group, team.topics.events, len(first_half[name]) // 2, timeout_s=90)
        second = _shared_worker(kafka, tmp_path / "w2.log")
        wait_group_stable(kafka, group, members=2)  # both split 2 teams x 3 partitions
        first.kill()
        for name, team in teams.items():
            produce(team, [e for run in runs[name] for e in run[len(run) // 2 :]])
        for name, team in teams.items():
            want = step_keys(expected[name].steps)
            steps = collect(team, team.topics.steps, lambda r, want=want: step_keys(r) >= want, 150)
            missing = want - step_keys(steps)
            assert not missing, f"team {name}: {len(missing)} steps lost, e.g. {sorted(missing)[:5]}\n{second.log()}"
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0, second.log()
