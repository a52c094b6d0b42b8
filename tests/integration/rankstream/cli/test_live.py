"""`rankstream alerts` and `rankstream tail` read the output topics of the stream jobs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kafka import KafkaConsumer, KafkaProducer

from rankstream.config import Settings
from rankstream.schema import alert_id, dlq_record
from rankstream.topics import SINK_ONLY_HEADER
from tests.integration.sinks.support import produce_records
from tests.integration.streamkit import replay

pytestmark = pytest.mark.kafka


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "rankstream.cli",
            *args,
            "--bootstrap",
            settings.bootstrap_servers,
            "--prefix",
            settings.topic_prefix,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _alert(run_id: str, team: str, rule: str, step: int) -> dict:
    return {
        "v": 1,
        "alert_id": alert_id(run_id, rule, step),
        "run_id": run_id,
        "team": team,
        "rule": rule,
        "severity": "warning",
        "step": step,
        "ranks": [1],
        "ts": 1.7e9 + step,
        "message": f"{rule} at step {step}",
        "evidence": {},
    }


def test_alerts_filters_and_dedups(kafka: Settings) -> None:
    records = [
        _alert("r1", "nlp", "loss_spike", 10),
        _alert("r1", "nlp", "loss_spike", 10),  # a re-emitted duplicate
        _alert("r1", "nlp", "straggler", 12),
        _alert("r2", "vision", "loss_spike", 3),
    ]
    resolved = {**records[2], "state": "resolved", "resolved_step": 40, "message": "Resolved: straggler"}
    produce_records(kafka, kafka.topics.alerts, [*records, resolved, resolved])
    everything = _cli(kafka, "alerts", "--format", "json")
    assert everything.returncode == 0, everything.stderr
    got = [json.loads(line) for line in everything.stdout.splitlines()]
    assert sorted((a["run_id"], a["rule"], a["step"], a.get("state", "firing")) for a in got) == [
        ("r1", "loss_spike", 10, "firing"),
        ("r1", "straggler", 12, "firing"),
        ("r1", "straggler", 12, "resolved"),  # its resolution shows once, after it
        ("r2", "loss_spike", 3, "firing"),
    ]
    text = _cli(kafka, "alerts", "--rule", "straggler").stdout.strip().splitlines()
    assert len(text) == 2 and text[1].startswith("resolved") and "Resolved: straggler" in text[1]
    nlp_spikes = _cli(kafka, "alerts", "--team", "nlp", "--rule", "loss_spike")
    assert nlp_spikes.returncode == 0
    lines = nlp_spikes.stdout.strip().splitlines()
    assert len(lines) == 1 and "r1 step 10" in lines[0] and "loss_spike" in lines[0]


def test_tail_once_shows_the_run(kafka: Settings) -> None:
    from rankstream.dev.synthetic import generate_run

    steps = replay(generate_run("tail-run", world_size=4, steps=30, seed=2)).steps
    produce_records(kafka, kafka.topics.steps, steps)
    shown = _cli(kafka, "tail", "tail-run", "--once", "--rows", "5")
    assert shown.returncode == 0, shown.stderr
    assert "tail-run" in shown.stdout
    for step in range(25, 30):
        assert f"│ {step:>4} │" in shown.stdout or f" {step} " in shown.stdout
    missing = _cli(kafka, "tail", "no-such-run", "--once")
    assert missing.returncode == 1 and "no aligned steps" in missing.stderr


def test_dlq_lists_reasons_and_redrives_the_selected_letters(kafka: Settings) -> None:
    """Dead letters as the worker and the sink write them: listed with their reason and origin; ``--redrive``
    sends exactly the store's refusals back to their topic (original bytes and key) marked for the sink alone."""
    refused = [(f"run-{i}".encode(), b'{"v":1,"kind":"step","n":%d}' % i) for i in range(3)]
    letters = [
        (key, dlq_record(raw, "the store refused the rows: Constraint `c` is violated", kafka.topics.events, 0, i))
        for i, (key, raw) in enumerate(refused)
    ]
    letters.append(
        (b"junk", dlq_record(b"\xff\xfenot json", "not valid JSON: unexpected byte", kafka.topics.events, 1, 7))
    )
    producer = KafkaProducer(**kafka.kafka_python_kwargs())
    for key, value in letters:
        producer.send(kafka.topics.dlq, key=key, value=value)
    producer.flush(30)
    producer.close()

    listed = _cli(kafka, "dlq")
    assert listed.returncode == 0, listed.stderr
    for offset in range(3):
        assert f"{kafka.topics.events}/0@{offset}  the store refused the rows: Constraint" in listed.stdout
    assert f"{kafka.topics.events}/1@7  not valid JSON" in listed.stdout
    assert "4 dead letter(s)" in listed.stdout and "3 x the store refused the rows" in listed.stdout
    as_json = _cli(kafka, "dlq", "--format", "json", "--reason", "NOT VALID")
    docs = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [d["offset"] for d in docs] == [7] and docs[0]["original"].encode("latin-1") == b"\xff\xfenot json"

    redriven = _cli(kafka, "dlq", "--redrive")  # only what the store refused goes back, for the sink alone
    assert redriven.returncode == 0, redriven.stderr
    assert "re-sent 3 message(s) the store had refused" in redriven.stdout
    assert (
        "1 letter(s) are invalid input, not refusals, or too large to keep whole, and were not re-sent"
        in redriven.stdout
    )
    consumer = KafkaConsumer(kafka.topics.events, auto_offset_reset="earliest", **kafka.kafka_python_kwargs())
    back: list[tuple[bytes, bytes, list]] = []
    for _ in range(40):
        for batch in consumer.poll(timeout_ms=500).values():
            back.extend((r.key, r.value, list(r.headers)) for r in batch)
        if len(back) >= 3:
            break
    consumer.close()
    assert sorted((k, v) for k, v, _ in back) == sorted(refused)
    assert all(headers == [(SINK_ONLY_HEADER, b"1")] for _, _, headers in back)
    bad = _cli(kafka, "dlq", "--redrive", "--follow")
    assert bad.returncode == 2 and "cannot be combined" in bad.stderr and "Traceback" not in bad.stderr
