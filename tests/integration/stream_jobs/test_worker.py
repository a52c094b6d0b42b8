"""The Faust worker on the real broker: equal to replay, crash-safe, scale-out, dead letters."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.dev.synthetic import Fault, generate_run
from rankstream.schema import dumps, loads
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


def _wait_for_progress(settings: Settings, minimum: int, timeout_s: float = 90.0) -> None:
    got = collect(settings, settings.topics.steps, lambda r: len(r) >= minimum, timeout_s)
    assert len(got) >= minimum, f"worker produced only {len(got)} steps"


def test_worker_output_equals_replay(kafka: Settings, tmp_path: Path) -> None:
    faults = [
        Fault("loss_spike", step=60),
        Fault("straggler", step=40, rank=3, duration=40),
        Fault("nan_loss", step=100),
    ]
    events = generate_run("run-eq", world_size=8, steps=140, faults=faults, seed=7)
    expected = replay(events)
    assert expected.alerts, "the scenario must raise alerts"
    produce(kafka, events)
    worker = WorkerProcess(kafka, tmp_path / "worker.log")
    try:
        steps = collect(kafka, kafka.topics.steps, lambda r: step_keys(r) >= step_keys(expected.steps))
        want_ids = {a["alert_id"] for a in expected.alerts}
        alerts = collect(kafka, kafka.topics.alerts, lambda r: {a["alert_id"] for a in r} >= want_ids, 60)
    finally:
        assert worker.stop() == 0, worker.log()
    assert step_keys(steps) == step_keys(expected.steps), worker.log()
    by_key = {(s["run_id"], s["step"]): s for s in steps}
    for step in expected.steps:
        got = by_key[(step["run_id"], step["step"])]
        assert got["complete"] == step["complete"]
        assert got["metrics"]["loss"]["mean"] == pytest.approx(step["metrics"]["loss"]["mean"])
    assert {a["alert_id"] for a in alerts} == {a["alert_id"] for a in expected.alerts}
    assert {a["rule"] for a in alerts} >= {"loss_spike", "straggler", "nonfinite_loss"}


def test_sigkill_and_restart_loses_no_step_and_keeps_detector_state(kafka: Settings, tmp_path: Path) -> None:
    """Kill -9 after the first half; the spike in the second half is only detectable with the
    loss window built from the first half, so it proves detector state survived the crash."""
    runs = [
        generate_run(f"run-k{i}", world_size=8, steps=300, faults=[Fault("loss_spike", step=160)], seed=i)
        for i in range(3)
    ]
    events = [e for run in runs for e in run]
    expected = replay(events)
    assert {a["rule"] for a in expected.alerts} >= {"loss_spike"}
    first_half = [e for e in events if e["kind"] == "run_start" or 0 <= e["step"] < 150]
    second_half = [e for e in events if not (e["kind"] == "run_start" or 0 <= e["step"] < 150)]
    produce(kafka, first_half)
    first = WorkerProcess(kafka, tmp_path / "w1.log")
    half_keys = {k for k in step_keys(expected.steps) if k[1] < 149}
    collect(kafka, kafka.topics.steps, lambda r: step_keys(r) >= half_keys, 90)
    # Most of the first half committed, so the restart resumes mid-stream, not from zero.
    wait_committed(kafka, f"{kafka.topic_prefix}-stream", kafka.topics.events, len(first_half) * 3 // 4)
    first.kill()
    produce(kafka, second_half)
    second = WorkerProcess(kafka, tmp_path / "w2.log")
    try:
        steps = collect(kafka, kafka.topics.steps, lambda r: step_keys(r) >= step_keys(expected.steps), 150)
        want_ids = {a["alert_id"] for a in expected.alerts}
        alerts = collect(kafka, kafka.topics.alerts, lambda r: {a["alert_id"] for a in r} >= want_ids, 60)
    finally:
        assert second.stop() == 0, second.log()
    assert step_keys(steps) == step_keys(expected.steps), second.log()
    unique = {a["alert_id"]: a for a in alerts}
    assert set(unique) == {a["alert_id"] for a in expected.alerts}
    assert sorted(a["rule"] for a in unique.values()) == sorted(a["rule"] for a in expected.alerts)
    # The restart resumed from the committed offsets (>= 3/4 of the first half, waited for above) with the
    # saved detector state: the events it re-read after the last commit are duplicates of released steps,
    # so (almost) no first-half step is published a second time.
    published = Counter((s["run_id"], s["step"]) for s in steps)
    again = [k for k in half_keys if published[k] > 1]
    assert len(again) < len(half_keys) // 4, f"{len(again)} of {len(half_keys)} first-half steps published twice"


def test_two_workers_one_killed_other_takes_over(kafka: Settings, tmp_path: Path) -> None:
    group = f"{kafka.topic_prefix}-pair"
    runs = [generate_run(f"run-p{i}", world_size=4, steps=200, seed=10 + i) for i in range(6)]
    half = [e for run in runs for e in run[: len(run) // 2]]
    rest = [e for run in runs for e in run[len(run) // 2 :]]
    expected = replay([e for run in runs for e in run])
    a = WorkerProcess(kafka, tmp_path / "a.log", group=group)
    b = WorkerProcess(kafka, tmp_path / "b.log", group=group)
    try:
        wait_group_stable(kafka, group, members=2)  # both joined the group and split the 3 partitions
        produce(kafka, half)
        _wait_for_progress(kafka, 100)
        a.kill()
        produce(kafka, rest)
        steps = collect(kafka, kafka.topics.steps, lambda r: step_keys(r) >= step_keys(expected.steps), 150)
    finally:
        assert b.stop() == 0, b.log()
    missing = step_keys(expected.steps) - step_keys(steps)
    assert not missing, f"{len(missing)} steps lost, e.g. {sorted(missing)[:5]}\n{b.log()}"


def test_workers_joining_and_leaving_under_load_lose_no_step_and_no_detector_state(
    kafka: Settings, tmp_path: Path
) -> None:
    """Two rebalances while events flow: a second worker joins (the first is revoked mid-batch,
    with results still being published), then the first leaves with SIGTERM. Every step appears,
    and the loss spikes at step 300, detectable only with windows built before the moves, are
    each found exactly once after dedup."""
    group = f"{kafka.topic_prefix}-churn"
    runs = [
        generate_run(f"run-c{i}", world_size=8, steps=400, faults=[Fault("loss_spike", step=300)], seed=30 + i)
        for i in range(6)
    ]
    events = sorted((e for run in runs for e in run), key=lambda e: e["ts"])
    expected = replay(events)
    assert {a["rule"] for a in expected.alerts} == {"loss_spike"}
    chunks = [events[i : i + 1000] for i in range(0, len(events), 1000)]
    a = WorkerProcess(kafka, tmp_path / "a.log", group=group)
    b: WorkerProcess | None = None
    try:
        wait_group_stable(kafka, group, members=1)  # a owns every partition
        for i, chunk in enumerate(chunks):
            produce(kafka, chunk)
            time.sleep(0.4)  # paces the job so that the rebalances happen while events flow
            if i == len(chunks) // 3:
                b = WorkerProcess(kafka, tmp_path / "b.log", group=group)
            if i == 2 * len(chunks) // 3:
                assert a.stop() == 0, a.log()
        steps = collect(kafka, kafka.topics.steps, lambda r: step_keys(r) >= step_keys(expected.steps), 150)
        want_ids = {x["alert_id"] for x in expected.alerts}
        alerts = collect(kafka, kafka.topics.alerts, lambda r: {x["alert_id"] for x in r} >= want_ids, 60)
    finally:
        a.stop()
        if b is not None:
            assert b.stop() == 0, b.log()
    missing = step_keys(expected.steps) - step_keys(steps)
    assert not missing, f"{len(missing)} steps lost, e.g. {sorted(missing)[:5]}\n{b.log() if b else ''}"
    extra = [(x["rule"], x["run_id"], x["step"], x.get("ranks")) for x in alerts if x["alert_id"] not in want_ids]
    assert not extra, extra


def test_malformed_messages_go_to_dlq_with_reasons(kafka: Settings, tmp_path: Path) -> None:
    good = generate_run("run-good", world_size=4, steps=60, seed=3)
    template = dict(next(e for e in good if e["kind"] == "step"))
    bad: list[bytes] = []
    kinds = {
        "not valid JSON": lambda i: b"{not json " + str(i).encode(),
        "must be an integer": lambda i: dumps({**template, "rank": "zero", "seq": i}),
        "out of range": lambda i: dumps({**template, "rank": 4 + i % 3, "seq": i}),
        "missing field": lambda i: dumps({k: v for k, v in template.items() if k != "seq"}),
        "too large": lambda i: b'{"v":1,"pad":"' + b"x" * 300_000 + b'"}',
    }
    for i in range(1000):
        bad.append(list(kinds.values())[i % len(kinds)](i))
    mixed: list[dict | bytes] = []
    for i, event in enumerate(good):
        mixed.append(event)
        if i < len(bad):
            mixed.append(bad[i])
    mixed.extend(bad[len(good) :])
    produce(kafka, mixed, key=b"run-good")
    expected = replay(good)
    worker = WorkerProcess(kafka, tmp_path / "worker.log")
    try:
        dlq = collect(kafka, kafka.topics.dlq, lambda r: len(r) >= 1000, 120)
        steps = collect(kafka, kafka.topics.steps, lambda r: step_keys(r) >= step_keys(expected.steps), 60)
    finally:
        assert worker.stop() == 0, worker.log()
    assert len(dlq) == 1000
    for reason in kinds:
        assert sum(reason in d["reason"] for d in dlq) == 200, reason
    assert all(d["original"] for d in dlq)
    out_of_range = next(d for d in dlq if "out of range" in d["reason"])
    assert loads(out_of_range["original"].encode("latin-1"))["rank"] >= 4
    assert step_keys(steps) == step_keys(expected.steps)
    assert all(s["complete"] for s in steps)


FAILING_PUBLISHER = """
import runpy, sys
import rankstream.stream_jobs.publisher as publisher

async def publish(self, result):
    raise RuntimeError("injected publisher failure")

publisher.Publisher.publish = publish
sys.argv = ["rankstream", *sys.argv[1:]]
runpy.run_module("rankstream.cli", run_name="__main__")
"""


def test_a_publisher_failure_ends_the_worker_and_a_restart_loses_no_step(kafka: Settings, tmp_path: Path) -> None:
    """An unexpected error while publishing must not leave a worker that consumes nothing (a silent outage
    of the monitoring): the worker exits non-zero, nothing it did not publish was committed, and a
    restarted worker publishes every step."""
    runs = [generate_run(f"run-f{i}", world_size=4, steps=100, seed=50 + i) for i in range(3)]
    events = [e for run in runs for e in run]
    expected = replay(events)
    produce(kafka, events)
    wrapper = tmp_path / "failing_worker.py"
    wrapper.write_text(FAILING_PUBLISHER)
    failing = WorkerProcess(kafka, tmp_path / "failing.log", entry=[sys.executable, str(wrapper)])
    try:
        code = failing.proc.wait(120)
    finally:
        failing.stop()
    assert code != 0 and "injected publisher failure" in failing.log(), failing.log()[-3000:]
    worker = WorkerProcess(kafka, tmp_path / "worker.log")
    try:
        steps = collect(kafka, kafka.topics.steps, lambda r: step_keys(r) >= step_keys(expected.steps), 150)
    finally:
        assert worker.stop() == 0, worker.log()
    missing = step_keys(expected.steps) - step_keys(steps)
    assert not missing, f"{len(missing)} steps lost, e.g. {sorted(missing)[:5]}"
