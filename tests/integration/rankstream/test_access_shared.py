"""One shared stream worker and one shared sink for every team, on a broker with SASL/SCRAM and ACLs (issue 14):
each team's jobs write only their own events topic, the services (``RANKSTREAM_TEAM=*``, the service principal)
take every record's team from the topic it came through, and a team cannot write into another team's run by
reusing its run_id."""

from __future__ import annotations

import math
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from rankstream.config import Settings
from rankstream.dev.synthetic import Fault, generate_run
from rankstream.kafka_access import team_topics
from rankstream.producer import Reporter
from rankstream.schema import dumps, loads
from rankstream.sinks.store import portfile
from tests.integration.conftest import SecureBroker, provision
from tests.integration.sinks.support import RANKSTREAM, http_client, wait_until

RUN = "shared-run"  # both teams use this run_id
A_STEPS, A_NAN_STEP = 30, 20
B_STEPS = 12


def _read(settings: Settings, topic: str, until: Any, what: str, wait_s: float = 90) -> list[dict]:
    """Every record of ``topic`` (one partition) as JSON, read until ``until(records)`` holds."""
    consumer = KafkaConsumer(**settings.kafka_python_kwargs(), enable_auto_commit=False, request_timeout_ms=10000)
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    seen: list[dict] = []

    def poll() -> list[dict] | None:
        for records in consumer.poll(timeout_ms=500).values():
            seen.extend(loads(r.value) for r in records)
        return seen if until(seen) else None

    try:
        return wait_until(poll, what, wait_s)
    finally:
        consumer.close()


def _service(secure: SecureBroker, tmp_path: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        [RANKSTREAM, name, "--bootstrap", secure.settings.bootstrap_servers, "--prefix", secure.settings.topic_prefix,
         "--state-dir", str(tmp_path / name), "--team", "*", *args],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **secure.service_env()},
    )  # fmt: skip
    log.close()
    return proc


@pytest.fixture(scope="module")
def secure_broker(secure_broker_admin: Settings) -> SecureBroker:
    """Teams a and b under the prefix ``shared`` (their own SCRAM users) on the session's secure broker."""
    return provision(secure_broker_admin, "shared", user_prefix="shared-")


@pytest.fixture
def services(secure_broker: SecureBroker, tmp_path: Path) -> Iterator[Path]:
    """A shared worker and a shared sink (embedded store under ``tmp_path/store``) as the service principal."""
    store = tmp_path / "store"
    procs = [
        _service(secure_broker, tmp_path, "worker"),
        _service(secure_broker, tmp_path, "sink", "--dsn", f"chdb://{store}", "--http-port", "0"),
    ]
    try:
        yield store
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)


def _loss(step: int, rank: int) -> float:
    return float("nan") if (rank == 1 and step == A_NAN_STEP) else 2.0 / step + 0.01 * rank


def _run_team_a_job(secure: SecureBroker, tmp_path: Path) -> None:
    """Team a's two ranks, with the real producer library and team a's credentials."""
    settings = secure.as_team("a")
    reporters = [
        Reporter(RUN, settings=settings, meta={"team": "a", "run_name": "a's run"}, rank=rank, world_size=2,
                 handle_signals=False, spool_dir=tmp_path / f"spool-a{rank}", max_events_per_s=0)
        for rank in range(2)
    ]  # fmt: skip
    for step in range(1, A_STEPS + 1):
        for rank, reporter in enumerate(reporters):
            reporter.log(step, loss=_loss(step, rank), lr=1e-3)
    for reporter in reporters:
        reporter.close(timeout=30)


def _send_as_team(secure: SecureBroker, team: str, events: list[dict]) -> None:
    settings = secure.as_team(team)
    producer = KafkaProducer(**settings.kafka_python_kwargs(), acks="all")
    for event in events:
        producer.send(settings.topics.events, dumps(event), key=event["run_id"].encode())
    producer.flush(timeout=30)
    producer.close()


def test_shared_services_keep_teams_apart(secure_broker: SecureBroker, services: Path, tmp_path: Path) -> None:
    secure, store = secure_broker, services
    svc = secure.as_user(*secure.service)
    a_topics, b_topics = (team_topics(secure.settings.topic_prefix, t) for t in ("a", "b"))

    # Team a's job runs first: its run is stored under team a.
    _run_team_a_job(secure, tmp_path)
    a_events = _read(svc, a_topics.events, lambda r: sum(e["kind"] == "run_end" for e in r) == 2, "team a's events")
    host, port = wait_until(lambda: portfile.find_server(store), "the shared sink's HTTP interface", 90)
    client = http_client(host, port)
    a_seqs = {(e["rank"], e["inc"], e["seq"]) for e in a_events}

    def stored(team: str, run_id: str) -> set[tuple[int, int, int]]:
        rows = client.query(
            "SELECT rank, inc, seq FROM rankstream.events FINAL WHERE team = {t:String} AND run_id = {r:String}",
            parameters={"t": team, "r": run_id},
        ).result_rows
        return {tuple(row) for row in rows}  # type: ignore[misc]

    wait_until(lambda: stored("a", RUN) == a_seqs, "every seq of team a's run stored under team a", 120)

    # Team b reuses team a's run_id (claiming team a, too), and runs one run of its own claiming team a.
    b_same_id = generate_run(RUN, world_size=2, steps=B_STEPS, seed=3, team="a", step_time_s=0.2)
    b_forged = generate_run("b-run", world_size=2, steps=B_STEPS, seed=4, team="a", step_time_s=0.2,
                            faults=[Fault("nan_loss", 6, rank=0)])  # fmt: skip
    _send_as_team(secure, "b", b_same_id + b_forged)

    # The worker: each team's lane aligned its own run; same run_id, separate outputs.
    a_steps = _read(svc, a_topics.steps, lambda r: {s["step"] for s in r if s["run_id"] == RUN} >= set(
        range(1, A_STEPS + 1)), "team a's aligned steps")  # fmt: skip
    a_run_steps = [s for s in a_steps if s["run_id"] == RUN and s.get("phase", "train") == "train"]
    assert sorted(s["step"] for s in a_run_steps) == list(range(1, A_STEPS + 1))  # each once: b's events not mixed in
    for s in a_run_steps:
        assert s["world_size"] == 2 and s["ranks_reported"] == 2
        if s["step"] != A_NAN_STEP:
            assert math.isclose(s["metrics"]["loss"]["mean"], (_loss(s["step"], 0) + _loss(s["step"], 1)) / 2)
    b_steps = _read(svc, b_topics.steps, lambda r: {(s["run_id"], s["step"]) for s in r} >= {
        (run, step) for run in (RUN, "b-run") for step in range(B_STEPS)}, "team b's aligned steps")  # fmt: skip
    b_loss = {(e["step"], e["rank"]): e["metrics"]["loss"] for e in b_same_id if e["kind"] == "step"}
    for s in (s for s in b_steps if s["run_id"] == RUN):
        assert math.isclose(s["metrics"]["loss"]["mean"], (b_loss[(s["step"], 0)] + b_loss[(s["step"], 1)]) / 2)

    a_alerts = _read(svc, a_topics.alerts, lambda r: any(a["rule"] == "nonfinite_loss" for a in r), "a's NaN alert")
    nan_alerts = [a for a in a_alerts if a["rule"] == "nonfinite_loss" and a.get("state", "firing") == "firing"]
    assert [(a["run_id"], a["team"], a["step"]) for a in nan_alerts] == [(RUN, "a", A_NAN_STEP)]
    b_alerts = _read(svc, b_topics.alerts, lambda r: any(a["rule"] == "nonfinite_loss" for a in r), "b's NaN alert")
    # b-run claimed team a: the alert is b's, on b's topic; b's healthy reuse of RUN fired no NaN alert
    firing_b = [a for a in b_alerts if a.get("state") != "resolved"]
    b_nan = [(a["run_id"], a["team"]) for a in firing_b if a["rule"] == "nonfinite_loss"]
    assert b_nan == [("b-run", "b")]
    assert all(a["team"] == "b" for a in b_alerts)

    # The sink: b's own run is stored under b; b's records of team a's run_id are dead letters on b's topic.
    b_run_seqs = {(e["rank"], e.get("inc", ""), e["seq"]) for e in b_forged}
    wait_until(lambda: stored("b", "b-run") == b_run_seqs, "every seq of b-run stored under team b", 120)
    letters = _read(svc, b_topics.dlq, lambda r: sum(d["source_topic"] == b_topics.events for d in r) >= len(
        b_same_id), "b's refused events of team a's run")  # fmt: skip
    refused_events = [d for d in letters if d["source_topic"] == b_topics.events]
    assert len(refused_events) == len(b_same_id)
    assert all("another team" in d["reason"] and "'a'" not in d["reason"] for d in refused_events)
    assert stored("a", RUN) == a_seqs and stored("b", RUN) == set()  # team a's history untouched
    runs = dict(client.query("SELECT run_id, team FROM rankstream.runs FINAL").result_rows)
    assert runs == {RUN: "a", "b-run": "b"}
    for table in ("steps", "alerts"):
        teams_of_run = client.query(f"SELECT DISTINCT team FROM rankstream.{table} FINAL WHERE run_id = '{RUN}'")
        assert {row[0] for row in teams_of_run.result_rows} <= {"a"}, table
