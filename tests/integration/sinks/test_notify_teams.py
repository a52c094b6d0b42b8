"""One shared notifier (``RANKSTREAM_TEAM=*``) for every team's ``<prefix>.<team>.alerts`` on the real broker:
each team's alerts reach that team's receiver with the topic's team, a team created while it runs is picked
up without a restart, a broken alert goes to its team's own dlq."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from rankstream.config import Settings
from rankstream.dev.webhook_receiver import WebhookReceiver
from rankstream.kafka_access import team_topics
from rankstream.kafka_admin import ensure_topics
from rankstream.schema import alert_id, dumps
from rankstream.sinks.notify.config import parse_config
from tests.integration.sinks.notify_kit import notifier_running, wait_for
from tests.integration.sinks.test_notify_pipeline import read_topic

pytestmark = [pytest.mark.kafka]


def record(run_id: str, team: str, step: int, name: str) -> dict[str, Any]:
    return {
        "v": 1,
        "alert_id": alert_id(run_id, "loss_spike", step, []),
        "run_id": run_id,
        "team": team,
        "rule": "loss_spike",
        "severity": "warning",
        "step": step,
        "ranks": [],
        "ts": 1_700_000_000.0 + step,
        "message": f"Loss of run {name} ({run_id}) jumped at step {step}.",
        "evidence": {"loss": 9.5},
    }


def produce(settings: Settings, topic: str, values: Iterable[dict[str, Any] | bytes]) -> None:
    producer = KafkaProducer(linger_ms=5, **settings.kafka_python_kwargs())
    for value in values:
        raw = value if isinstance(value, bytes) else dumps(value)
        producer.send(topic, key=b"run", value=raw)
    producer.flush(30)
    producer.close()


def add_team(settings: Settings, team: str) -> None:
    ensure_topics(settings.with_overrides(topic_prefix=team_topics(settings.topic_prefix, team).prefix))


def delivered(hooks: WebhookReceiver, path: str) -> list[tuple[str, str, int]]:
    """(team, run_id, step) of every alert the webhook at ``path`` was sent."""
    return sorted((a["team"], a["run_id"], a["step"]) for r in hooks.on(path) for a in r.body["alerts"])


def committed(offsets: dict[str, int], team: str) -> int:
    """Committed offsets summed over the partitions of ``team``'s alerts topic (keys ``topic/partition``)."""
    return sum(offset for key, offset in offsets.items() if key.rsplit("/", 1)[0].endswith(f".{team}.alerts"))


def test_one_notifier_serves_every_team_by_topic(kafka: Settings, tmp_path: Path) -> None:
    for team in ("a", "b"):
        add_team(kafka, team)
    shared = kafka.with_overrides(team="*")
    steps = range(10, 15)
    with WebhookReceiver() as hooks:
        config = parse_config(
            {
                "group_wait_s": 0.2,
                "receivers": {
                    "hook_a": {"kind": "webhook", "url": f"{hooks.url}/a"},
                    "hook_b": {"kind": "webhook", "url": f"{hooks.url}/b"},
                    "hook_c": {"kind": "webhook", "url": f"{hooks.url}/c"},
                },
                "routes": [
                    {"match": {"team": "a"}, "receivers": ["hook_a"]},
                    {"match": {"team": "b"}, "receivers": ["hook_b"]},
                    {"match": {"team": "c"}, "receivers": ["hook_c"]},
                ],
            },
            env={},
        )
        # the same run_id in both teams; b's worker topic carries a record claiming team a
        produce(kafka, team_topics(kafka.topic_prefix, "a").alerts, [record("run-x", "a", s, "of-a") for s in steps])
        produce(kafka, team_topics(kafka.topic_prefix, "b").alerts, [record("run-x", "a", s, "of-b") for s in steps])
        produce(kafka, team_topics(kafka.topic_prefix, "b").alerts, [b"{broken"])
        with notifier_running(shared, config, topic_refresh_s=1) as notifier:
            want_a = [("a", "run-x", s) for s in steps]
            want_b = [("b", "run-x", s) for s in steps]
            wait_for(lambda: delivered(hooks, "/a") == want_a and delivered(hooks, "/b") == want_b, 60,
                     "every alert of teams a and b at its team's receiver",
                     detail=lambda: (delivered(hooks, "/a"), delivered(hooks, "/b")))  # fmt: skip
            assert notifier.stats.team_corrected == len(steps)  # b's records claimed a: the topic won
            assert notifier.stats.duplicates == 0  # same alert_ids in two teams: neither is a duplicate

            add_team(kafka, "c")  # a team that appears while the notifier runs
            produce(kafka, team_topics(kafka.topic_prefix, "c").alerts, [record("run-c", "c", 7, "of-c")])
            wait_for(lambda: delivered(hooks, "/c") == [("c", "run-c", 7)], 60,
                     "team c's alert, its topic created after the notifier started",
                     detail=lambda: (delivered(hooks, "/c"), dict(notifier.stats.teams)))  # fmt: skip
            wait_for(lambda: committed(notifier.stats.committed, "c") == 1, 30, "team c's offset committed",
                     detail=lambda: notifier.stats.committed)  # fmt: skip
        assert delivered(hooks, "/a") == want_a and delivered(hooks, "/b") == want_b  # nothing crossed over
        assert dict(notifier.stats.teams) == {"a": len(steps), "b": len(steps) + 1, "c": 1}
    letters = read_topic(kafka, team_topics(kafka.topic_prefix, "b").dlq)
    assert [(d["source_topic"], d["reason"].startswith("notify: invalid alert")) for d in letters] == [
        (team_topics(kafka.topic_prefix, "b").alerts, True)
    ]
    assert read_topic(kafka, team_topics(kafka.topic_prefix, "a").dlq) == []
    assert committed(notifier.stats.committed, "b") == len(steps) + 1  # the dead-lettered one included


def test_the_cli_with_team_star_uses_its_own_group_and_stops_cleanly(kafka: Settings, tmp_path: Path) -> None:
    """`rankstream notify --team '*'` (RANKSTREAM_TEAM=* works the same): a team's alert reaches its receiver
    with the topic's team, the offsets are committed in `<prefix>.teams-notify`, SIGTERM exits 0."""
    import os
    import signal
    import subprocess
    import sys

    from tests.integration.streamkit import committed_offsets

    add_team(kafka, "a")
    a_alerts = team_topics(kafka.topic_prefix, "a").alerts
    produce(kafka, a_alerts, [record("run-1", "someone-else", 3, "first")])
    with WebhookReceiver() as hooks:
        config = tmp_path / "notify.yaml"
        config.write_text(f"group_wait_s: 0.2\nreceivers:\n  a: {{kind: webhook, url: '{hooks.url}/a'}}\n"
                          "routes:\n  - {match: {team: a}, receivers: [a]}\n")  # fmt: skip
        log_path = tmp_path / "notify.log"
        with log_path.open("wb") as log:
            notify = subprocess.Popen(
                [sys.executable, "-m", "rankstream.cli", "notify", "--config", str(config), "--team", "*",
                 "--topic-refresh-seconds", "1", "--bootstrap", kafka.bootstrap_servers,
                 "--prefix", kafka.topic_prefix],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RANKSTREAM_TEAM": ""},
            )  # fmt: skip
        try:
            wait_for(lambda: delivered(hooks, "/a") == [("a", "run-1", 3)], 60, "team a's alert at its receiver",
                     detail=lambda: log_path.read_text()[-1500:])  # fmt: skip
            wait_for(lambda: committed_offsets(kafka, f"{kafka.topic_prefix}.teams-notify", a_alerts) == 1, 30,
                     "the alert's offset committed in the shared notifier's group")  # fmt: skip
        finally:
            notify.send_signal(signal.SIGTERM)
            rc = notify.wait(60)
        text = log_path.read_text()
        assert rc == 0, text
        assert f"every team's alerts topic {kafka.topic_prefix}.<team>.alerts" in text and "new: " + a_alerts in text
