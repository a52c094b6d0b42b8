"""`rankstream alerts` and `rankstream tail` read the output topics of the stream jobs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rankstream.config import Settings
from rankstream.schema import alert_id
from tests.integration.streamkit import replay
from tests.integration.test_sink_support import produce_records

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
    produce_records(kafka, kafka.topics.alerts, records)
    everything = _cli(kafka, "alerts", "--format", "json")
    assert everything.returncode == 0, everything.stderr
    got = [json.loads(line) for line in everything.stdout.splitlines()]
    assert sorted((a["run_id"], a["rule"], a["step"]) for a in got) == [
        ("r1", "loss_spike", 10),
        ("r1", "straggler", 12),
        ("r2", "loss_spike", 3),
    ]
    nlp_spikes = _cli(kafka, "alerts", "--team", "nlp", "--rule", "loss_spike")
    assert nlp_spikes.returncode == 0
    lines = nlp_spikes.stdout.strip().splitlines()
    assert len(lines) == 1 and "r1 step 10" in lines[0] and "loss_spike" in lines[0]


def test_tail_once_shows_the_run(kafka: Settings) -> None:
    from rankstream.synthetic import generate_run

    steps = replay(generate_run("tail-run", world_size=4, steps=30, seed=2)).steps
    produce_records(kafka, kafka.topics.steps, steps)
    shown = _cli(kafka, "tail", "tail-run", "--once", "--rows", "5")
    assert shown.returncode == 0, shown.stderr
    assert "tail-run" in shown.stdout
    for step in range(25, 30):
        assert f"│ {step:>4} │" in shown.stdout or f" {step} " in shown.stdout
    missing = _cli(kafka, "tail", "no-such-run", "--once")
    assert missing.returncode == 1 and "no aligned steps" in missing.stderr
