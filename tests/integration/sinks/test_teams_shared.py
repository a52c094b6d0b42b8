"""One sink for every team's topics (``--team '*'``) and a run_id that belongs to one team (issue 14), on the shared
broker and a real chDB store.

Each record's team is the one of the topic it came through (``<prefix>.<team>.events|steps|alerts``), a team's topics
created while the sink runs are read without a restart, and a record of a run another team owns is not stored: it goes
to its own team's dead-letter topic, and the owner's rows stay exactly as they were.
"""

from __future__ import annotations

import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rankstream.config import Settings
from rankstream.kafka_access import team_topics
from rankstream.kafka_admin import ensure_topics
from rankstream.schema import loads
from tests.integration.sinks.support import (
    SinkProcess,
    alert_record,
    free_port,
    generate_run,
    http_client,
    produce_events,
    produce_records,
    read_topic,
    server_dsn,
    start_store,
    step_record,
    wait_until,
)

pytestmark = pytest.mark.kafka

STEPS = 12
WORLD = 2
TABLES = ("runs", "events", "metrics", "steps", "step_metrics", "alerts")


def _team(kafka: Settings, team: str) -> Settings:
    """Settings of ``team``'s topics ``<prefix>.<team>.*`` (created, 3 partitions)."""
    settings = kafka.with_overrides(topic_prefix=team_topics(kafka.topic_prefix, team).prefix)
    ensure_topics(settings)
    return settings


def _send_run(settings: Settings, run_id: str, claimed_team: str, t0: float) -> list[dict]:
    """A run's raw events (run_start claiming ``claimed_team``), its aligned steps and one alert on ``settings``'
    topics; returns the events."""
    events = generate_run(run_id, WORLD, STEPS, team=claimed_team, t0=t0)
    produce_events(settings, events)
    produce_records(settings, settings.topics.steps, [step_record(run_id, s, WORLD, t0) for s in range(STEPS)])
    produce_records(settings, settings.topics.alerts, [alert_record(run_id, claimed_team, "nan", 3, [1], t0)])
    return events


def _seqs(client: Any, team: str, run_id: str) -> set[tuple[int, int]]:
    rows = client.query(
        "SELECT rank, seq FROM rankstream.events FINAL WHERE team = {t:String} AND run_id = {r:String}",
        parameters={"t": team, "r": run_id},
    ).result_rows
    return {(int(rank), int(seq)) for rank, seq in rows}


def _rows_by_team(client: Any, run_id: str) -> dict[tuple[str, str], int]:
    """``(table, team) -> rows`` of ``run_id`` in every table (FINAL)."""
    out: dict[tuple[str, str], int] = {}
    for table in TABLES:
        query = f"SELECT team, count() FROM rankstream.{table} FINAL WHERE run_id = {{r:String}} GROUP BY team"
        for team, n in client.query(query, parameters={"r": run_id}).result_rows:
            out[(table, team)] = int(n)
    return out


def _expected_rows(team: str, events: list[dict]) -> dict[tuple[str, str], int]:
    """What :func:`_rows_by_team` shows for a run sent by :func:`_send_run` through ``team``'s topics."""
    return {
        ("runs", team): 1,
        ("events", team): len(events),
        ("metrics", team): sum(len(e["metrics"]) for e in events),
        ("steps", team): STEPS,
        ("step_metrics", team): 2 * STEPS,
        ("alerts", team): 1,
    }


def _runs_row(client: Any, run_id: str) -> tuple:
    return tuple(client.query(f"SELECT * FROM rankstream.runs FINAL WHERE run_id = '{run_id}'").result_rows[0])


def _metrics(log: str) -> dict[str, float]:
    port = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", log)
    assert port, log[-2000:]
    with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples if not s.labels}


def _dead_letters(settings: Settings, expected: int) -> list[dict]:
    letters = [loads(r.value) for r in read_topic(settings, settings.topics.dlq, expected, timeout_s=90)]
    assert len(letters) == expected, letters[-3:]
    return letters


def test_one_sink_stores_every_teams_topics_with_the_topics_team_and_keeps_runs_apart(
    kafka: Settings, tmp_path: Path
) -> None:
    a, b = _team(kafka, "a"), _team(kafka, "b")
    a_events = _send_run(a, "ra", "a", 1.75e9)
    b_events = _send_run(b, "rb", "a", 1.76e9)  # team b's run_start claims team a
    store = tmp_path / "store"
    sink = SinkProcess(
        kafka, f"chdb://{store}", tmp_path / "sink.log", "--team", "*", "--http-port", "0", "--metrics-port", "0",
        "--batch-seconds", "0.2", "--topic-refresh-seconds", "2",
    )  # fmt: skip
    host, port = sink.start().wait_ready(store)
    client = http_client(host, port)
    try:
        sink.wait_log("every team's topics")
        want = {"ra": _expected_rows("a", a_events), "rb": _expected_rows("b", b_events)}
        for run_id, rows in want.items():
            wait_until(lambda r=run_id, w=rows: _rows_by_team(client, r) == w, f"every row of {run_id}, its team's")
        assert _seqs(client, "a", "ra") == {(e["rank"], e["seq"]) for e in a_events}
        assert _seqs(client, "b", "rb") == {(e["rank"], e["seq"]) for e in b_events}
        assert client.command("SELECT count() FROM rankstream.events WHERE team = ''") == 0  # never team-less

        # Team c's topics appear while the sink runs: read without a restart.
        c = _team(kafka, "c")
        c_events = _send_run(c, "rc", "c", 1.77e9)
        wait_until(lambda: _rows_by_team(client, "rc") == _expected_rows("c", c_events), "team c's run", 120)
        assert _seqs(client, "c", "rc") == {(e["rank"], e["seq"]) for e in c_events}

        # Team b reuses team a's run_id: every record of it goes to b's dead-letter topic, a's rows stay.
        before = _runs_row(client, "ra")
        reuse = generate_run("ra", WORLD, STEPS, team="b", t0=1.78e9)
        sent = produce_events(b, reuse)
        sent += produce_records(b, b.topics.steps, [step_record("ra", s, WORLD, 1.78e9) for s in range(3)])
        sent += produce_records(b, b.topics.alerts, [alert_record("ra", "b", "nan", 5, [0], 1.78e9)])
        letters = _dead_letters(b, sent)
        assert {letter["reason"] for letter in letters} == {"run_id 'ra' belongs to another team"}
        assert {letter["source_topic"] for letter in letters} == {b.topics.events, b.topics.steps, b.topics.alerts}
        assert read_topic(a, a.topics.dlq, 1, timeout_s=3) == []  # nothing of it in a's
        assert _rows_by_team(client, "ra") == _expected_rows("a", a_events)  # every row of a's run, counted
        assert _seqs(client, "a", "ra") == {(e["rank"], e["seq"]) for e in a_events}
        assert _runs_row(client, "ra") == before
        metrics = wait_until(
            lambda: (m := _metrics(sink.log()))["rankstream_sink_foreign_runs_total"] == sent and m, "the count"
        )
        assert metrics["rankstream_sink_team_corrected_total"] == 1  # b's run_start that claimed team a
        assert metrics["rankstream_sink_dlq_total"] == sent
    finally:
        client.close()
        assert sink.stop() == 0, sink.log()[-3000:]
    assert "of runs another team owns sent to their team's dead-letter topic" in sink.log()


def test_a_one_team_sink_refuses_a_run_id_another_team_owns(kafka: Settings, tmp_path: Path) -> None:
    """Team b's sink stores b's runs (one of them without run_start or run_end: no runs row); then team a's own sink
    (``--team a``, a restart: it knows nothing but the store) refuses a's records of both run_ids."""
    a, b = _team(kafka, "a"), _team(kafka, "b")
    b_events = _send_run(b, "rx", "b", 1.75e9)
    ry = generate_run("ry", WORLD, STEPS, team="b", t0=1.76e9)
    headless = [e for e in ry if e["kind"] not in ("run_start", "run_end")]  # owned through its events rows only
    produce_events(b, headless)
    store = tmp_path / "store"
    args = ("--http-port", "0", "--batch-seconds", "0.2")
    sink_b = SinkProcess(b, f"chdb://{store}", tmp_path / "b.log", "--team", "b", *args)
    host, port = sink_b.start().wait_ready(store)
    client = http_client(host, port)
    try:
        wait_until(lambda: _rows_by_team(client, "rx") == _expected_rows("b", b_events), "b's run")
        wait_until(lambda: _seqs(client, "b", "ry") == {(e["rank"], e["seq"]) for e in headless}, "b's headless run")
    finally:
        client.close()
        assert sink_b.stop() == 0, sink_b.log()[-3000:]
    reuse = generate_run("rx", WORLD, 3, team="a", t0=1.77e9) + generate_run("ry", WORLD, 3, team="a", t0=1.77e9)
    sent = produce_events(a, reuse)
    sink_a = SinkProcess(a, f"chdb://{store}", tmp_path / "a.log", "--team", "a", *args)
    host, port = sink_a.start().wait_ready(store)
    client = http_client(host, port)
    try:
        letters = _dead_letters(a, sent)
        assert {letter["reason"] for letter in letters} == {
            "run_id 'rx' belongs to another team",
            "run_id 'ry' belongs to another team",
        }
        assert _rows_by_team(client, "rx") == _expected_rows("b", b_events)
        assert _seqs(client, "b", "ry") == {(e["rank"], e["seq"]) for e in headless}
        assert _rows_by_team(client, "ry") == {
            ("events", "b"): len(headless),
            ("metrics", "b"): sum(len(e["metrics"]) for e in headless),
        }
    finally:
        client.close()
        assert sink_a.stop() == 0, sink_a.log()[-3000:]
    assert read_topic(b, b.topics.dlq, 1, timeout_s=3) == []


def test_a_shared_sink_waits_out_a_store_outage_and_reads_a_new_teams_topics_without_loss(
    kafka: Settings, tmp_path: Path
) -> None:
    """The store goes down with a backlog on team a's topics; team c's topics (and a backlog on them) appear meanwhile.
    Memory stays within a batch, and once the store is back every seq of every rank of both teams is stored, under its
    team (the new topics' subscription and its rebalance happen around the outage's paused partitions)."""
    a = _team(kafka, "a")
    port, store_path = free_port(), tmp_path / "server-store"
    server = start_store(store_path, port, tmp_path / "store.log")
    batch_rows = 500
    sink = SinkProcess(
        kafka, server_dsn(port), tmp_path / "sink.log", "--team", "*", "--batch-rows", str(batch_rows),
        "--batch-seconds", "0.2", "--topic-refresh-seconds", "1",
    )  # fmt: skip
    try:
        client = wait_until(lambda: http_client("127.0.0.1", port), "the store server", 60)
        sink.start().wait_log("consuming 3 team topic(s)")
        first = generate_run("a-first", WORLD, STEPS, team="a")
        produce_events(a, first)
        wait_until(lambda: _seqs(client, "a", "a-first") == {(e["rank"], e["seq"]) for e in first}, "a's first run")
        client.close()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        a_backlog = generate_run("a-backlog", 4, 150, team="a", t0=1.76e9)
        produce_events(a, a_backlog)
        sink.wait_log("unavailable")
        c = _team(kafka, "c")
        c_backlog = generate_run("c-backlog", 4, 150, team="a", t0=1.77e9)  # claims team a: stored as c's
        produce_events(c, c_backlog)
        server = start_store(store_path, port, tmp_path / "store.log")
        client = wait_until(lambda: http_client("127.0.0.1", port), "the store server again", 60)
        for team, run_id, events in (("a", "a-backlog", a_backlog), ("c", "c-backlog", c_backlog)):
            want = {(e["rank"], e["seq"]) for e in events}
            wait_until(lambda t=team, r=run_id, w=want: _seqs(client, t, r) == w, f"every seq of {run_id}", 120)
        teams = dict(client.query("SELECT team, count() FROM rankstream.events FINAL GROUP BY team").result_rows)
        assert teams == {"a": len(first) + len(a_backlog), "c": len(c_backlog)}
        client.close()
    finally:
        assert sink.stop() == 0, sink.log()[-3000:]
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    log = sink.log()
    assert "consuming 6 team topic(s); new: " in log
    buffered = int(re.search(r"at most (\d+) rows buffered", log).group(1))  # type: ignore[union-attr]
    assert buffered < batch_rows + 10, log[-3000:]  # one batch plus one message, not the backlog
