"""A faulty run through the real pipeline: events -> `rankstream worker` -> alerts -> `rankstream notify` ->
Debian's AlertManager, read back through its v2 API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.dev.alertmanager import AlertManagerProcess
from rankstream.dev.synthetic import Fault, generate_run
from rankstream.dev.webhook_receiver import WebhookReceiver
from rankstream.schema import loads
from tests.integration.sinks.notify_kit import alertmanager, wait_for
from tests.integration.streamkit import WorkerProcess, collect, committed_offsets, produce, replay

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def chat_states(hooks: WebhookReceiver) -> set[tuple[str, str]]:
    """(alert_id, state) of everything the JSON receiver was sent."""
    return {(a["alert_id"], a["state"]) for r in hooks.on("/json") for a in r.body["alerts"]}


def read_topic(settings: Settings, topic: str) -> list[dict]:
    """Every record of ``topic`` up to its current end."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(**settings.kafka_python_kwargs())
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out: list[dict] = []
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(loads(r.value) for r in batch)
        return out
    finally:
        consumer.close()


def holding(am: AlertManagerProcess, ids: set[str]) -> tuple[list[dict]] | None:
    """AlertManager's active alerts, wrapped, when they are exactly ``ids``; else None."""
    got = am.alerts()
    return (got,) if {a["labels"]["alert_id"] for a in got} == ids else None


def test_faulty_run_reaches_alertmanager_through_worker_and_notify_cli(kafka: Settings, tmp_path: Path) -> None:
    faults = [
        Fault("loss_spike", step=60),
        Fault("straggler", step=40, rank=3, duration=40),
        Fault("nan_loss", step=100),
    ]
    events = generate_run("run-am", world_size=8, steps=140, faults=faults, seed=7, team="nlp")
    expected = replay(events)
    replay_fired = {a["alert_id"] for a in expected.alerts if a.get("state", "firing") == "firing"}
    assert {a["rule"] for a in expected.alerts} >= {"loss_spike", "straggler", "nonfinite_loss"}
    produce(kafka, events)
    with WebhookReceiver() as hooks, alertmanager(tmp_path, hooks.url) as am:
        worker = WorkerProcess(kafka, tmp_path / "worker.log")
        config = tmp_path / "notify.yaml"
        config.write_text(
            "group_wait_s: 0.5\n"
            "receivers:\n"
            f"  am: {{kind: alertmanager, url: '{am.url}'}}\n"
            "  ops: {kind: webhook, url: '${OPS_HOOK}/json'}\n"
        )
        notify_log = (tmp_path / "notify.log").open("wb")
        notify = subprocess.Popen(
            [
                *(sys.executable, "-m", "rankstream.cli", "notify", "--config", str(config)),
                *("--bootstrap", kafka.bootstrap_servers, "--prefix", kafka.topic_prefix),
            ],
            stdout=notify_log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OPS_HOOK": hooks.url},
        )
        try:
            collect(kafka, kafka.topics.alerts, lambda r: {a["alert_id"] for a in r} >= replay_fired, 120)
            assert worker.stop() == 0, worker.log()  # what it published is now final
            published = read_topic(kafka, kafka.topics.alerts)
            fired = {a["alert_id"]: a for a in published if a.get("state", "firing") == "firing"}
            resolved = {a["alert_id"] for a in published if a.get("state") == "resolved"}
            want = {alert_id: a for alert_id, a in fired.items() if alert_id not in resolved}
            # Firing alerts stay active (endsAt 15 min ahead); those the run resolved (state "resolved", once
            # the core emits it) leave AlertManager's active alerts when the resolve is delivered.
            sent = {(a["alert_id"], a.get("state", "firing")) for a in published}
            wait_for(lambda: chat_states(hooks) >= sent, 60, "every alert and resolve at the JSON receiver")
            active = wait_for(
                lambda: holding(am, set(want)),
                60,
                "AlertManager to hold exactly the run's unresolved alerts",
                detail=lambda: (
                    sorted((a["labels"]["rule"], a["labels"]["alert_id"] in want) for a in am.alerts()),
                    sorted((a["rule"], a.get("state", "firing")) for a in published),
                    (tmp_path / "notify.log").read_text()[-1500:],
                ),
            )[0]  # wrapped: an empty list of active alerts is a valid answer
            groups = am.groups()
            group = f"{kafka.topic_prefix}.notify"
            wait_for(
                lambda: committed_offsets(kafka, group, kafka.topics.alerts) == len(published),
                30,
                "the notifier to commit every alert",
            )
        finally:
            notify.send_signal(signal.SIGTERM)
            rc = notify.wait(60)
            notify_log.close()
            worker.stop()
        log = (tmp_path / "notify.log").read_text()
        assert rc == 0, log
    assert {a["labels"]["alert_id"] for a in active} == set(want), log
    for alert in active:
        source = want[alert["labels"]["alert_id"]]
        assert alert["labels"]["rule"] == source["rule"] and alert["labels"]["severity"] == source["severity"]
        assert alert["labels"]["team"] == "nlp" and alert["labels"]["run_name"] == "tiny-llama-run-am"
        assert alert["annotations"]["message"] == source["message"]
        assert alert["status"]["state"] in ("active", "suppressed")
    run_groups = [g for g in groups if g["labels"].get("run_id") == "run-am"]
    assert all(g["labels"] == {"run_id": "run-am"} for g in run_groups)  # AlertManager groups by run
    assert {a["labels"]["alert_id"] for g in run_groups for a in g["alerts"]} == set(want)
    assert "notify: stopped after" in log
