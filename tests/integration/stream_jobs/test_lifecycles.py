"""One run, many lives (issue 18) on the real broker with a real ``rankstream worker``: a relaunch under one
run_id (through the sink into chDB too), elastic shrink and grow, a whole job dying at once, a host two hours
ahead in another run of the same partition, and one event lost mid-run.

Launches are cut out of synthetic runs by :func:`tests.lifecycle_kit.launch` (seq from 0 and a new ``inc`` per
rank per launch), the same scenarios as the pure-core tests in tests/unit/stream_jobs/core/test_lifecycles.py.
The wall-clock scenarios produce events stamped with the wall time, paced like a live job, and measure
when the worker published its outputs (the records' Kafka timestamps).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rankstream.config import Settings
from rankstream.dev.synthetic import Fault, generate_run
from rankstream.kafka_admin import ensure_topics
from rankstream.schema import dumps, loads
from tests.integration.sinks.support import SinkProcess, count, http_client, wait_until
from tests.integration.streamkit import (
    Published,
    WorkerProcess,
    at_wall_time,
    collect,
    collect_published,
    produce,
    produce_in_real_time,
    replay,
    step_keys,
)
from tests.lifecycle_kit import LIVENESS_RULES, latest_by_step, launch

pytestmark = pytest.mark.kafka

#: The default alignment grace (``grace_min_s``): the longest a lost seq may hold later steps back.
GRACE_S = 30.0


def _normal(records: list[dict]) -> list[dict]:
    """Records as they look after a trip through Kafka (JSON), to compare replay's output with the worker's."""
    return [loads(dumps(r)) for r in records]


def _alarms(alerts: list[dict], run_id: str) -> list[tuple[str, str, list[int]]]:
    """The liveness alerts at warning or above of one run."""
    return [
        (a["rule"], a["severity"], a["ranks"])
        for a in alerts
        if a["run_id"] == run_id and a["rule"] in LIVENESS_RULES and a["severity"] != "info"
    ]


def _live(events: list[dict[str, Any]], start: float) -> list[dict[str, Any]]:
    """A launch stamped with the wall time from ``start`` on, its run_start half a second before its first
    step (not the synthetic five seconds of start-up, which would only make the test wait)."""
    body = [e for e in events if e["kind"] != "run_start"]
    first = min(e["ts"] for e in body)
    starts = [{**e, "ts": first - 0.5 + e["rank"] * 1e-3} for e in events if e["kind"] == "run_start"]
    return at_wall_time(sorted(starts + body, key=lambda e: e["ts"]), start)


def _worker_consuming(settings: Settings) -> None:
    """Wait until the worker consumes and publishes: a one-rank warm-up run's aligned steps come back."""
    warmup = generate_run("warm-up", 1, 3, start_ts=1.6e9)
    produce(settings, warmup)
    got = collect(settings, settings.topics.steps, lambda r: step_keys(r) >= {("warm-up", 2)}, 90)
    assert step_keys(got) >= {("warm-up", 2)}, "the worker never published the warm-up run"


# ------------------------------------------------------------------------------------- relaunch + sink


@pytest.mark.slow
def test_a_relaunch_under_one_run_id_keeps_both_launches_and_both_attempts_in_the_store(
    kafka: Settings, tmp_path: Path
) -> None:
    """8 ranks x 1,000 steps, crashed at step 600 and resumed from the step-500 checkpoint under the same
    run_id: every (rank, inc, seq) of both launches is stored, steps 500..599 twice (attempts 0 and 1),
    and the latest attempt of every step 0..999 is complete."""
    run_id, world, steps = "relaunch", 8, 1000
    full = generate_run(run_id, world, steps, heartbeat_every_s=10.0)
    first = launch(full, inc="a", to_step=600, ended=False)
    second = launch(full, inc="b", from_step=500, start_ts=max(e["ts"] for e in first) + 30.0)
    events = first + second
    expected = replay(events)
    attempts = {(s, 0) for s in range(600)} | {(s, 1) for s in range(500, steps)}
    assert {(s["step"], s["restart"]) for s in expected.steps} == attempts  # the scenario, on the pure core

    produce(kafka, events)
    store = tmp_path / "store"
    sink = SinkProcess(kafka, f"chdb://{store}", tmp_path / "sink.log", "--http-port", "0").start()
    worker = WorkerProcess(kafka, tmp_path / "worker.log")
    try:
        client = http_client(*sink.wait_ready(store))
        where = f"WHERE run_id = '{run_id}'"
        wait_until(
            lambda: count(client, "events", where) == len(events) and count(client, "steps", where) == len(attempts),
            "both launches' events and both attempts' steps in the store",
            timeout_s=120,
        )
        wait_until(
            lambda: count(client, "steps", f"{where} AND complete") == len(attempts),
            "every attempt of every step complete in the store",
            timeout_s=60,
        )
        stored = client.query(f"SELECT rank, inc, seq FROM rankstream.events FINAL {where}").result_rows
        by_attempt = client.query(f"SELECT step, attempt FROM rankstream.steps FINAL {where}").result_rows
        latest = client.query(
            f"SELECT step, attempt, complete, ranks_reported FROM rankstream.steps FINAL {where} "
            "ORDER BY step, attempt DESC LIMIT 1 BY step"
        ).result_rows
        alerts = collect(kafka, kafka.topics.alerts, lambda r: len(r) >= len(expected.alerts), 30)
    finally:
        assert worker.stop() == 0, worker.log()
        assert sink.stop() == 0, sink.log()[-3000:]

    # every seq of every incarnation, once: the relaunch's seq 0.. replaced nothing of the first launch
    assert sorted(stored) == sorted((e["rank"], e["inc"], e["seq"]) for e in events)
    per_inc = Counter(inc for _, inc, _ in stored)
    assert per_inc == Counter(e["inc"] for e in events) and len(per_inc) == 2 * world
    assert sorted(by_attempt) == sorted(attempts)
    assert latest == [(s, 0 if s < 500 else 1, True, world) for s in range(steps)]
    assert not _alarms(alerts, run_id), alerts
    assert sorted(a["alert_id"] for a in alerts) == sorted(a["alert_id"] for a in expected.alerts)


# ------------------------------------------------------------------------------------- elastic shrink and grow


def test_elastic_shrink_and_grow_under_one_run_id(kafka: Settings, tmp_path: Path) -> None:
    """8 ranks to step 400, 6 ranks to step 700, 8 again to 1,000: every step aligned complete with the
    world of its launch, two membership changes at info, no liveness alert."""
    run_id = "elastic"
    eight = generate_run(run_id, 8, 1000, heartbeat_every_s=10.0)
    six = generate_run(run_id, 6, 1000, heartbeat_every_s=10.0, seed=1)
    first = launch(eight, inc="a", to_step=400, ended=False)
    second = launch(six, inc="b", from_step=400, to_step=700, start_ts=max(e["ts"] for e in first) + 20.0, ended=False)
    third = launch(eight, inc="c", from_step=700, start_ts=max(e["ts"] for e in second) + 20.0)
    events = first + second + third
    expected = replay(events)
    # every step event of every rank (each seq of each incarnation is one event; the steps count them)
    per_step = Counter(e["step"] for e in events if e["kind"] == "step")
    assert per_step == {s: 8 if s < 400 or s >= 700 else 6 for s in range(1000)}

    produce(kafka, events)
    worker = WorkerProcess(kafka, tmp_path / "worker.log")
    try:

        def every_step_complete(records: list[dict]) -> bool:
            latest = latest_by_step(records)
            return len(latest) == 1000 and all(s["complete"] for s in latest.values())

        steps = collect(kafka, kafka.topics.steps, every_step_complete, 120)
        want = {a["alert_id"] for a in expected.alerts}
        alerts = collect(kafka, kafka.topics.alerts, lambda r: {a["alert_id"] for a in r} >= want, 30)
    finally:
        assert worker.stop() == 0, worker.log()

    latest = latest_by_step(steps)
    assert sorted(latest) == list(range(1000)), worker.log()
    assert {s: (x["complete"], x["ranks_reported"]) for s, x in latest.items()} == {
        s: (True, n) for s, n in per_step.items()
    }
    assert {latest[s]["world_size"] for s in range(400, 700)} == {6}
    assert {latest[s]["world_size"] for s in [*range(400), *range(700, 1000)]} == {8}
    assert not _alarms(alerts, run_id), alerts
    changes = [a for a in alerts if a["rule"] == "membership_changed"]
    assert [(a["severity"], a["evidence"]["world_size_before"], a["evidence"]["world_size"]) for a in changes] == [
        ("info", 8, 6),
        ("info", 6, 8),
    ]
    assert sorted(a["alert_id"] for a in alerts) == sorted(want)  # as replay


# ------------------------------------------------------------------------------------- whole-job death

FAST_LIVENESS = """\
rules:
  run_lost: {min_s: 10}
  rank_silent: {min_s: 10}
"""


@pytest.mark.slow
def test_a_job_whose_ranks_all_die_raises_run_lost_within_the_threshold(kafka: Settings, tmp_path: Path) -> None:
    """Every rank SIGKILLed at once: the events simply stop (no run_end). The worker's wall clock notices:
    one critical run_lost naming every rank, 10 s (the threshold) to ~20 s after the last event."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(FAST_LIVENESS)
    run_id, world = "dead-job", 4
    full = generate_run(run_id, world, 400, step_time_s=0.1, heartbeat_every_s=1.0)
    worker = WorkerProcess(kafka, tmp_path / "worker.log", rules=rules)
    try:
        _worker_consuming(kafka)
        died = _live(launch(full, inc="a", to_step=40, ended=False), time.time())
        sent = produce_in_real_time(kafka, died)
        last_ts, last_sent = max(e["ts"] for e in died), max(sent)

        def lost(records: list[Published]) -> list[Published]:
            return [r for r in records if r.value["run_id"] == run_id and r.value["rule"] == "run_lost"]

        alerts = collect_published(kafka, kafka.topics.alerts, lambda r: bool(lost(r)), 45)
        steps = collect(kafka, kafka.topics.steps, lambda r: {(run_id, s) for s in range(40)} <= step_keys(r), 30)
    finally:
        assert worker.stop() == 0, worker.log()

    (alert,) = lost(alerts)
    assert alert.value["severity"] == "critical" and alert.value["ranks"] == list(range(world))
    assert alert.value["step"] == 39
    assert last_ts + 10.0 <= alert.at <= last_sent + 20.0, (alert.at - last_ts, worker.log())
    others = [r.value for r in alerts if r is not alert]
    assert not _alarms(others, run_id), others  # no rank_silent/rank_hung on the way
    mine = [s for s in steps if s["run_id"] == run_id]
    assert sorted(s["step"] for s in mine) == list(range(40))  # every step the job made, once
    assert all(s["complete"] and s["ranks_reported"] == world for s in mine)


# ------------------------------------------------------------------------------------- a clock 2 h ahead


@pytest.fixture
def one_partition(kafka_broker: Settings, tmp_path: Path) -> Settings:
    """Topics with a single partition: every run shares the worker's one engine."""
    settings = kafka_broker.with_overrides(
        topic_prefix=f"t{uuid.uuid4().hex[:10]}", state_dir=str(tmp_path / "state"), partitions=1
    )
    ensure_topics(settings)
    return settings


def test_a_host_two_hours_ahead_in_another_run_of_the_partition_changes_nothing(
    one_partition: Settings, tmp_path: Path
) -> None:
    """A skewed run (every ts + 2 h) interleaved by real time with a healthy run in one partition: the
    healthy run's steps and alerts (a loss spike, a straggler) from the worker are exactly replay's of the
    healthy run alone."""
    settings = one_partition
    faults = [Fault("loss_spike", step=300), Fault("straggler", step=200, rank=1, duration=30)]
    healthy = generate_run("healthy", 4, 600, faults=faults)
    skewed = [{**e, "ts": e["ts"] + 7200.0} for e in generate_run("skewed", 4, 600, seed=3)]
    both = sorted(healthy + skewed, key=lambda e: e["ts"] - (7200.0 if e["run_id"] == "skewed" else 0.0))
    alone = replay(healthy)
    skewed_alone = replay(skewed)
    want_steps = step_keys(alone.steps) | step_keys(skewed_alone.steps)
    assert {a["rule"] for a in alone.alerts} >= {"loss_spike", "straggler"}  # alerts to compare
    assert len(want_steps) == 1200

    produce(settings, both)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        steps = collect(settings, settings.topics.steps, lambda r: step_keys(r) >= want_steps, 120)
        want = {(a["alert_id"], a["state"]) for a in alone.alerts + alone.resolved}
        alerts = collect(
            settings, settings.topics.alerts, lambda r: {(a["alert_id"], a["state"]) for a in r} >= want, 30
        )
    finally:
        assert worker.stop() == 0, worker.log()

    assert step_keys(steps) == want_steps, worker.log()
    assert [s for s in steps if s["run_id"] == "healthy"] == _normal(alone.steps)
    healthy_alerts = [a for a in alerts if a["run_id"] == "healthy"]
    assert [a for a in healthy_alerts if a["state"] == "firing"] == _normal(alone.alerts)
    assert [a for a in healthy_alerts if a["state"] == "resolved"] == _normal(alone.resolved)
    skewed_steps = [s for s in steps if s["run_id"] == "skewed"]
    assert all(s["complete"] and s["ranks_reported"] == 4 for s in skewed_steps)  # nothing of it dropped


# ------------------------------------------------------------------------------------- one event lost


@pytest.mark.slow
def test_a_lost_event_holds_later_steps_back_at_most_the_grace_period(kafka: Settings, tmp_path: Path) -> None:
    """8 ranks at 2 steps/s for ~48 s, stamped with the wall time; rank 2's step-10 event never arrives.
    Every later step is published within the grace (30 s) + 4 s of its last event; once the gap is given
    up, steps are published within 2 s again.

    At 2 steps/s the grace is what bounds the hold: ``max_steps_ahead`` (100 steps) would take 50 s. (At
    20 steps/s it is the 100 steps ahead that release the gap, after 5 s.)"""
    run_id, world, n_steps = "gap", 8, 96
    full = generate_run(run_id, world, n_steps, step_time_s=0.5)
    worker = WorkerProcess(kafka, tmp_path / "worker.log")
    try:
        _worker_consuming(kafka)
        events = _live(launch(full, inc="a"), time.time())
        dropped = next(e for e in events if e["kind"] == "step" and e["rank"] == 2 and e["step"] == 10)
        kept = [e for e in events if e is not dropped]
        sent = produce_in_real_time(kafka, kept)
        wanted = {(run_id, s) for s in range(n_steps)}
        published = collect_published(
            kafka, kafka.topics.steps, lambda r: step_keys(p.value for p in r) >= wanted, GRACE_S + 30
        )
    finally:
        assert worker.stop() == 0, worker.log()

    first_sent: dict[int, float] = {}
    last_sent: dict[int, float] = {}
    for e, at in zip(kept, sent, strict=True):
        if e["kind"] == "step":
            first_sent.setdefault(e["step"], at)
            last_sent[e["step"]] = at
    first_out: dict[int, Published] = {}
    for p in published:
        if p.value["run_id"] == run_id:
            first_out.setdefault(p.value["step"], p)
    assert sorted(first_out) == list(range(n_steps)), worker.log()
    # every step with every rank, but the one that lost rank 2's event
    ranks = {s: (p.value["ranks_reported"], p.value["missing_ranks"]) for s, p in first_out.items()}
    assert ranks == {s: (world - 1, [2]) if s == 10 else (world, []) for s in range(n_steps)}

    delay = {s: first_out[s].at - last_sent[s] for s in range(n_steps)}
    assert max(delay.values()) <= GRACE_S + 4.0, {s: round(d, 2) for s, d in delay.items()}
    settled = [s for s in range(n_steps) if first_sent[s] > dropped["ts"] + GRACE_S + 2.0]
    assert len(settled) >= 10, "the run must go on well past the gap"
    slow = {s: round(delay[s], 2) for s in settled if delay[s] > 2.0}
    assert not slow, slow
