"""Team identity on a real broker with SASL_PLAINTEXT + SCRAM-SHA-512 and ACLs (issue 14 items 3, 6):
a team's credentials write only its events topic and read only its alerts; the service principal reads both."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, TopicAuthorizationFailedError

from rankstream import kafka_access
from rankstream.config import Settings
from rankstream.kafka_access import TeamPrincipal, team_topics
from tests.integration.conftest import free_port, provision


@pytest.fixture(scope="module")
def broker(secure_broker_admin: Settings) -> tuple[Settings, dict[str, TeamPrincipal]]:
    """Teams a and b and the service principal ``svc`` under the prefix ``acl`` on the session's secure broker."""
    secure = provision(secure_broker_admin, "acl")
    return secure.settings, secure.teams


def _as(settings: Settings, user: str, password: str) -> dict[str, Any]:
    return settings.with_overrides(sasl_username=user, sasl_password=password).kafka_python_kwargs()


def _team(settings: Settings, team: TeamPrincipal) -> dict[str, Any]:
    return _as(settings, team.user, team.password)


def _send(kwargs: dict[str, Any], topic: str, value: bytes, block_ms: int = 15000) -> None:
    producer = KafkaProducer(
        **kwargs, max_block_ms=block_ms, bootstrap_timeout_ms=block_ms, request_timeout_ms=10000, retries=0
    )
    try:
        producer.send(topic, value).get(timeout=20)
    finally:
        producer.close(timeout=5)


def _read_all(
    kwargs: dict[str, Any], topic: str, group: str | None = None, expect: int = 1, wait_s: float = 20
) -> list[bytes]:
    """Every record of partition 0 of ``topic`` from the start (at least ``expect``, waited for under a deadline)."""
    consumer = KafkaConsumer(**kwargs, group_id=group, enable_auto_commit=False, request_timeout_ms=10000)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        seen: list[bytes] = []
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                seen += [r.value for r in records]
            if len(seen) >= expect and consumer.position(partition) >= consumer.end_offsets([partition])[partition]:
                break
        return seen
    finally:
        consumer.close()


def test_a_team_writes_its_events_topic(broker: tuple[Settings, dict[str, TeamPrincipal]]) -> None:
    settings, teams = broker
    topic = team_topics(settings.topic_prefix, "a").events
    for i in range(3):
        _send(_team(settings, teams["a"]), topic, f"a-{i}".encode())
    seen = _read_all(_as(settings, "svc", "svc-" + settings.sasl_password), topic, expect=3)
    assert sorted(seen) == [b"a-0", b"a-1", b"a-2"]  # every one, through the service principal


def test_another_teams_credentials_cannot_write_its_topic(broker: tuple[Settings, dict[str, TeamPrincipal]]) -> None:
    settings, teams = broker
    a_events = team_topics(settings.topic_prefix, "a").events
    with pytest.raises(TopicAuthorizationFailedError):
        _send(_team(settings, teams["b"]), a_events, b"forged by b")
    with pytest.raises(TopicAuthorizationFailedError):  # nor the shared topic of the prefix
        _send(_team(settings, teams["b"]), f"{settings.topic_prefix}.events", b"forged by b")
    seen = _read_all(_as(settings, "admin", settings.sasl_password), a_events, expect=0)
    assert b"forged by b" not in seen


def test_a_team_reads_its_alerts_only(broker: tuple[Settings, dict[str, TeamPrincipal]]) -> None:
    settings, teams = broker
    admin = _as(settings, "admin", settings.sasl_password)
    a_alerts = team_topics(settings.topic_prefix, "a").alerts
    _send(admin, a_alerts, b"alert of a")
    assert _read_all(_team(settings, teams["a"]), a_alerts) == [b"alert of a"]
    assert _read_all(_team(settings, teams["b"]), a_alerts, wait_s=5) == []
    assert _metadata_error(_team(settings, teams["b"]), a_alerts) == TOPIC_AUTHORIZATION_FAILED
    b_events = team_topics(settings.topic_prefix, "b").events  # a team reads no events, not even another's
    assert _metadata_error(_team(settings, teams["a"]), b_events) == TOPIC_AUTHORIZATION_FAILED
    assert _metadata_error(_team(settings, teams["a"]), a_alerts) == 0


TOPIC_AUTHORIZATION_FAILED = TopicAuthorizationFailedError.errno


def _metadata_error(kwargs: dict[str, Any], topic: str) -> int:
    """The broker's error code for ``topic`` in a metadata request with these credentials."""
    admin = KafkaAdminClient(**kwargs, request_timeout_ms=10000)
    try:
        try:
            described = admin.describe_topics([topic])
        except TopicAuthorizationFailedError:
            return TOPIC_AUTHORIZATION_FAILED
        return int(described[0].get("error_code", 0))
    finally:
        admin.close()


def test_wrong_or_no_credentials_are_refused(broker: tuple[Settings, dict[str, TeamPrincipal]]) -> None:
    settings, teams = broker
    topic = team_topics(settings.topic_prefix, "a").events
    with pytest.raises(KafkaError):
        _send(_as(settings, teams["a"].user, teams["a"].password + "x"), topic, b"wrong password", block_ms=4000)
    plain = Settings(bootstrap_servers=settings.bootstrap_servers).kafka_python_kwargs()
    with pytest.raises(KafkaError):
        _send(plain, topic, b"no credentials", block_ms=4000)
    seen = _read_all(_as(settings, "admin", settings.sasl_password), topic, expect=0, wait_s=5)
    assert b"wrong password" not in seen and b"no credentials" not in seen


def test_production_commands_name_every_grant() -> None:
    teams = [TeamPrincipal("a", "team-a"), TeamPrincipal("b", "team-b")]
    text = kafka_access.render_commands("rankstream", teams, "rankstream-service", "kafka:9092")
    assert "--allow-principal User:team-a --operation Write --topic rankstream.a.events" in text
    assert "--allow-principal User:team-b --operation Read --topic rankstream.b.alerts" in text
    assert "--operation All --topic rankstream. --resource-pattern-type prefixed" in text
    assert text.count("--entity-type users") == 3


def test_a_forged_team_never_reaches_another_teams_rows(
    broker: tuple[Settings, dict[str, TeamPrincipal]], tmp_path: Path
) -> None:
    """Team b's job claims team a in meta; b's sink (RANKSTREAM_TEAM=b, the service principal) stores it as b's."""
    from rankstream.dev.synthetic import generate_run
    from rankstream.schema import dumps
    from rankstream.sinks.store import portfile
    from rankstream.sinks.store.tables import COLUMNS
    from tests.integration.sinks.support import RANKSTREAM, http_client, wait_until

    settings, teams = broker
    events = generate_run("forged-run", world_size=2, steps=3, seed=5, team="a")
    producer = KafkaProducer(**_team(settings, teams["b"]), acks="all")
    b_events = team_topics(settings.topic_prefix, "b").events
    for event in events:
        producer.send(b_events, dumps(event), key=event["run_id"].encode())
    producer.flush(timeout=30)
    producer.close()
    store = tmp_path / "store"
    env = {
        **os.environ,
        "RANKSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "RANKSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
        "RANKSTREAM_SASL_USERNAME": "svc",
        "RANKSTREAM_SASL_PASSWORD": "svc-" + settings.sasl_password,
        "RANKSTREAM_TEAM": "b",
    }
    log = (tmp_path / "sink.log").open("ab")
    sink = subprocess.Popen(
        [RANKSTREAM, "sink", "--dsn", f"chdb://{store}", "--bootstrap", settings.bootstrap_servers,
         "--prefix", f"{settings.topic_prefix}.b", "--state-dir", str(tmp_path), "--http-port", "0"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    log.close()
    try:
        host, port = wait_until(lambda: portfile.find_server(store), "the sink's HTTP interface", 90)
        client = http_client(host, port)
        want = {(e["rank"], e["seq"]) for e in events}
        got = wait_until(
            lambda: want == set(client.query("SELECT rank, seq FROM rankstream.events FINAL").result_rows) or None,
            "every event of the forged run in the store",
            90,
        )
        assert got
        for table in COLUMNS:
            teams_seen = {
                row[0] for row in client.query(f"SELECT DISTINCT team FROM rankstream.{table} FINAL").result_rows
            }
            assert "a" not in teams_seen, (table, teams_seen)
        assert client.query("SELECT team FROM rankstream.runs FINAL").result_rows == [("b",)]
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=60)


def test_access_kafka_apply_creates_a_team_that_writes_only_its_topic(
    broker: tuple[Settings, dict[str, TeamPrincipal]], tmp_path: Path
) -> None:
    """`rankstream access kafka --apply` (the admin of RANKSTREAM_SASL_*) adds team c from a YAML; c's
    credentials then write c's events and read c's alerts, and nothing of a's."""
    from tests.integration.sinks.support import RANKSTREAM

    settings, _ = broker
    c_password = secrets.token_urlsafe(16)
    (tmp_path / "c.pw").write_text(c_password + "\n")
    config = tmp_path / "teams.yaml"
    config.write_text(
        "service: {user: svc, password_env: SVC_PW}\n"
        f"teams:\n  - {{team: c, user: team-c, password_file: {tmp_path / 'c.pw'}}}\n"
    )
    env = {
        **os.environ,
        "RANKSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "RANKSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
        "RANKSTREAM_SASL_USERNAME": "admin",
        "RANKSTREAM_SASL_PASSWORD": settings.sasl_password,
        "SVC_PW": "svc-" + settings.sasl_password,  # the service principal keeps its password
        "RANKSTREAM_PARTITIONS": "1",  # of the topics it creates (_read_all reads partition 0)
    }
    command = [RANKSTREAM, "access", "kafka", str(config), "--apply", "--prefix", settings.topic_prefix]
    done = subprocess.run([*command, "--bootstrap", settings.bootstrap_servers], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 SCRAM user(s) set (team-c, svc)" in done.stdout and c_password not in done.stdout + done.stderr
    c = TeamPrincipal("c", "team-c", c_password)
    c_topics, a_topics = team_topics(settings.topic_prefix, "c"), team_topics(settings.topic_prefix, "a")
    _send(_team(settings, c), c_topics.events, b"from c")
    assert _read_all(_as(settings, "svc", "svc-" + settings.sasl_password), c_topics.events) == [b"from c"]
    with pytest.raises(TopicAuthorizationFailedError):
        _send(_team(settings, c), a_topics.events, b"forged by c")
    _send(_as(settings, "admin", settings.sasl_password), c_topics.alerts, b"alert of c")
    assert _read_all(_team(settings, c), c_topics.alerts) == [b"alert of c"]
    assert _metadata_error(_team(settings, c), a_topics.alerts) == TOPIC_AUTHORIZATION_FAILED
    again = subprocess.run([*command, "--bootstrap", settings.bootstrap_servers], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0 and "0 topic(s) created" in again.stdout  # idempotent

    wrong = subprocess.run([*command, "--bootstrap", settings.bootstrap_servers], capture_output=True, text=True,
                           env={**env, "RANKSTREAM_SASL_PASSWORD": "not-the-admin"}, timeout=120)  # fmt: skip
    assert wrong.returncode == 3 and len(wrong.stderr.splitlines()) == 1, wrong.stderr
    unreachable = subprocess.run([*command, "--bootstrap", f"127.0.0.1:{free_port()}"], env=env,
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
    assert unreachable.returncode == 3 and "unavailable" in unreachable.stderr, unreachable.stderr
    assert len(unreachable.stderr.splitlines()) == 1
