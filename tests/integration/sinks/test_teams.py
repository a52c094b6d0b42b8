"""Team on every row once the run's team is known, on a real broker and a real chDB store.

Rows of a run whose run_start the sink has not seen (aligned steps ahead of the
events, rank 1 reporting before rank 0, the run_start handled by another sink of
the group) are stored first without a team and re-stamped once it is known; the
row policies of ``rbac.sql`` filter on ``team``, so an empty one would hide them.
Counts stay exact under FINAL: a re-stamp replaces rows, it never adds any.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rankstream.config import Settings
from tests.integration.sinks.support import (
    SinkProcess,
    count,
    expected_counts,
    free_port,
    generate_run,
    http_client,
    produce_events,
    produce_records,
    runs_on_partition,
    server_dsn,
    start_store,
    step_record,
    wait_until,
)

pytestmark = pytest.mark.kafka

TABLES = ("runs", "events", "metrics", "steps", "step_metrics")
STEPS = 30


def _teams(client: Any) -> dict[tuple[str, str], int]:
    """``(table, team) -> rows`` for every table that takes the team from the run (FINAL)."""
    out: dict[tuple[str, str], int] = {}
    for table in TABLES:
        query = f"SELECT team, count() FROM rankstream.{table} FINAL GROUP BY team"
        for team, n in client.query(query).result_rows:
            out[(table, team)] = int(n)
    return out


def _expected_teams(runs: dict[str, tuple[str, list[dict]]]) -> dict[tuple[str, str], int]:
    """What :func:`_teams` must show once every run's team is on every row: one per team, exact counts."""
    out: dict[tuple[str, str], int] = {}
    for team, events in runs.values():
        exp = expected_counts(events)
        for table, n in (("runs", 1), *exp.items(), ("steps", STEPS), ("step_metrics", 2 * STEPS)):
            out[(table, team)] = out.get((table, team), 0) + n
    return out


def _found_in_store(log: str) -> int:
    """Runs whose team a sink's re-stamps found in the store's runs table (not in its own run_start)."""
    return sum(int(n) for n in re.findall(r"re-stamped .* \((\d+) found in the store\)", log))


def _steps(run_id: str, world: int) -> list[dict]:
    return [step_record(run_id, s, world) for s in range(STEPS)]


def test_steps_and_events_before_the_run_start_get_the_team_once_it_arrives(kafka: Settings, tmp_path: Path) -> None:
    world = 4
    events = generate_run("late-start", world, STEPS, team="vision")
    early = [e for e in events if e["rank"] != 0]  # rank 0 (the only run_start with the team) reports last
    produce_records(kafka, kafka.topics.steps, _steps("late-start", world))
    produce_events(kafka, early)
    store = tmp_path / "store"
    sink = SinkProcess(kafka, f"chdb://{store}", tmp_path / "sink.log", "--http-port", "0", "--batch-seconds", "0.2")
    host, port = sink.start().wait_ready(store)
    client = http_client(host, port)
    try:
        wait_until(lambda: count(client, "steps") == STEPS and count(client, "events") == len(early), "early rows")
        assert count(client, "steps", "WHERE team = ''") == STEPS  # the case under test: stored before the team
        produce_events(kafka, [e for e in events if e["rank"] == 0])
        want = _expected_teams({"late-start": ("vision", events)})
        wait_until(lambda: _teams(client) == want, "every row with team 'vision', counts exact", 60)
        assert count(client, "steps", "WHERE team = 'vision'") == STEPS  # what team vision's row policy lets through
    finally:
        client.close()
        assert sink.stop() == 0
    log = sink.log()
    assert "re-stamped the rows of 1 run(s) stored before their team was known (0 found in the store)" in log
    assert "1 run(s) re-stamped with their team" in log, log[-3000:]


@pytest.fixture
def store_server(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = start_store(tmp_path / "server-store", port, tmp_path / "store.log")
    try:
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_two_sinks_of_one_group_stamp_rows_whose_run_start_the_other_sink_stored(
    kafka: Settings, tmp_path: Path, store_server: int
) -> None:
    """Sink A stores every run's steps alone; then B joins and the runs' events (run_start) are split between
    them. The steps of the runs whose run_start B stored get their team from the store's ``runs`` table."""
    world = 2
    ids = [runs_on_partition("team-run", p)[0] for p in range(3)]
    runs = {
        run_id: (team, generate_run(run_id, world, STEPS, team=team, t0=1.75e9 + p * 1e4))
        for p, (run_id, team) in enumerate(zip(ids, ("vision", "nlp", "vision"), strict=True))
    }  # one run per partition: whichever partitions B gets, A stored steps of a run whose run_start B stores
    dsn = server_dsn(store_server)
    client = wait_until(lambda: http_client("127.0.0.1", store_server), "the store server", 60)
    first = SinkProcess(kafka, dsn, tmp_path / "a.log", "--batch-seconds", "0.2").start()
    second = SinkProcess(kafka, dsn, tmp_path / "b.log", "--batch-seconds", "0.2")
    try:
        for run_id in runs:
            produce_records(kafka, kafka.topics.steps, _steps(run_id, world))
        wait_until(lambda: count(client, "steps") == 3 * STEPS, "every run's steps, stored by A alone")
        assert count(client, "steps", "WHERE team = ''") == 3 * STEPS
        second.start()
        second.wait_log("assigned")
        wait_until(lambda: re.search(r"assigned [1-9]\d* partition", second.log()), "B's share of the partitions")
        wait_until(lambda: len(re.findall(r"assigned \d+ partition", first.log())) >= 2, "A's new assignment")
        for _, events in runs.values():
            produce_events(kafka, events)
        want = _expected_teams(runs)
        wait_until(lambda: _teams(client) == want, "every row of every run with its team, counts exact", 90)
        for run_id, (team, _) in runs.items():
            assert count(client, "steps", f"WHERE run_id = '{run_id}' AND team = '{team}'") == STEPS
        # A never sees the run_start of the runs B consumes: it learns their team from the store's runs table
        # (B, which found A's team-less steps in the store when it started, may have re-stamped them first).
        wait_until(lambda: _found_in_store(first.log()) >= 1, "A finding a team in the store", 30)
    finally:
        client.close()
        assert first.stop() == 0
        if second.proc is not None:
            assert second.stop() == 0
