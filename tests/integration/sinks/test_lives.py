"""One run, many lives, through a real broker and ``rankstream sink`` into chDB.

(a) Two launches of one run_id (seq from 0 again, a new ``inc``) and a step range aligned again after the
resume (``restart`` 0 then 1): every ``(rank, inc, seq)`` is stored, both attempts of the repeated steps
are kept, and the cookbook shows the latest attempt. (b) A store created by migrations 0001 and 0002, holding
rows, is upgraded by the next sink start and keeps them. (c) A ``run_lost`` alert makes the run ``lost``, and
an event stamped after it makes it ``running`` again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rankstream.config import Settings
from rankstream.kafka_admin import ensure_topics
from rankstream.sinks.store.migrations import MIGRATIONS_TABLE, applied_versions, migration_files, split_statements
from tests.integration.sinks.support import (
    RANKSTREAM,
    SinkProcess,
    alert_record,
    cookbook_queries,
    count,
    free_port,
    http_client,
    loss_at,
    produce_events,
    produce_records,
    start_store,
    step_record,
    wait_until,
)

pytestmark = pytest.mark.kafka

T0 = 1_750_000_000.0
WORLD = 2
RELAUNCH, LOST, ENDED = "relaunch", "lost-run", "ended-run"
FIRST_STEPS, RESUME_FROM, LAST_STEP = range(0, 10), 5, 14  # launch a: steps 0..9 (crash), launch b: 5..14
RESUMED_OFFSET = 10.0  # launch b's losses (and aligned means) are the first launch's + 10


def _event(run_id: str, rank: int, inc: str, seq: int, kind: str, step: int, ts: float, **extra: Any) -> dict:
    return {
        "v": 1, "kind": kind, "run_id": run_id, "rank": rank, "world_size": WORLD, "local_rank": rank,
        "host": f"node{inc}", "step": step, "ts": ts, "seq": seq, "inc": inc, "tags": {}, **extra,
    }  # fmt: skip


def launch(run_id: str, inc: str, steps: range, t0: float, *, ended: bool, offset: float = 0.0) -> list[dict]:
    """One launch of every rank: run_start, one event per step, run_end if ``ended``; seq from 0 per rank."""
    out: list[dict] = []
    for rank in range(WORLD):
        own = [_event(run_id, rank, inc, 0, "run_start", -1, t0, meta={"team": "vision"} if rank == 0 else {})]
        for step in steps:
            metrics = {"loss": loss_at(step, rank) + offset}
            own.append(_event(run_id, rank, inc, len(own), "step", step, t0 + 1 + step, metrics=metrics))
        if ended:
            own.append(_event(run_id, rank, inc, len(own), "run_end", steps[-1], t0 + 2 + steps[-1]))
        out += own
    return out


def aligned(run_id: str, step: int, restart: int, *, ranks: int = WORLD, offset: float = 0.0) -> dict:
    record = step_record(run_id, step, WORLD)
    record["restart"] = restart
    record["ranks_reported"] = ranks
    record["complete"] = ranks == WORLD
    record["missing_ranks"] = list(range(ranks, WORLD))
    for agg in record["metrics"].values():
        agg["mean"] += offset
        agg["n"] = ranks
    return record


@dataclass
class Store:
    settings: Settings
    path: Path
    sink: SinkProcess
    client: Any


@pytest.fixture(scope="module")
def store(kafka_broker: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    tmp = tmp_path_factory.mktemp("sink_lives")
    settings = kafka_broker.with_overrides(
        topic_prefix=f"t{uuid.uuid4().hex[:10]}", state_dir=str(tmp / "state"), partitions=3
    )
    ensure_topics(settings)
    path = tmp / "store"
    sink = SinkProcess(settings, f"chdb://{path}", tmp / "sink.log", "--http-port", "0", "--batch-rows", "500")
    sink.start()
    host, port = sink.wait_ready(path)
    client = http_client(host, port)
    try:
        yield Store(settings, path, sink, client)
    finally:
        client.close()
        sink.stop()


def test_two_launches_and_two_attempts_of_one_run_are_all_kept(store: Store) -> None:
    first = launch(RELAUNCH, "a", FIRST_STEPS, T0, ended=False)
    second = launch(RELAUNCH, "b", range(RESUME_FROM, LAST_STEP + 1), T0 + 100, ended=True, offset=RESUMED_OFFSET)
    events = first + second
    produce_events(store.settings, events)
    steps = [aligned(RELAUNCH, s, 0) for s in FIRST_STEPS]
    resumed = range(RESUME_FROM, LAST_STEP + 1)
    # step 7 of the second attempt goes out partial first, then revised with every rank: the revision wins
    steps += [aligned(RELAUNCH, 7, 1, ranks=1, offset=RESUMED_OFFSET)]
    steps += [aligned(RELAUNCH, s, 1, offset=RESUMED_OFFSET) for s in resumed]
    produce_records(store.settings, store.settings.topics.steps, steps)
    c, where = store.client, f"WHERE run_id = '{RELAUNCH}'"
    n_steps = len(FIRST_STEPS) + len(resumed)
    wait_until(
        lambda: (
            count(c, "metrics", where) == sum(len(e.get("metrics", {})) for e in events)
            and count(c, "step_metrics", where) == 2 * n_steps
        ),
        "both launches and both attempts",
    )

    # every (rank, inc, seq) of both launches, once: the relaunch's seq 0.. did not replace the first launch's
    stored = c.query(f"SELECT rank, inc, seq FROM rankstream.events FINAL {where}").result_rows
    assert sorted(stored) == sorted((e["rank"], e["inc"], e["seq"]) for e in events)
    assert count(c, "events", where) == len(events)
    by_launch = c.query(
        f"SELECT inc, uniqExact(rank, seq), max(seq) FROM rankstream.events FINAL {where} GROUP BY inc ORDER BY inc"
    ).result_rows
    assert by_launch == [("a", WORLD * 11, 10), ("b", WORLD * 12, 11)]
    completeness = c.query(cookbook_queries()["completeness"], parameters={"run_id": RELAUNCH}).result_rows
    assert [(rank, inc, missing) for rank, inc, _, _, _, missing in completeness] == [
        (rank, inc, 0) for rank in range(WORLD) for inc in ("a", "b")
    ]

    # both attempts of the repeated steps; within an attempt the fullest publication
    attempts = c.query(
        f"SELECT step, attempt, ranks_reported FROM rankstream.steps FINAL {where} ORDER BY step, attempt"
    ).result_rows
    expected = sorted([(s, 0, WORLD) for s in FIRST_STEPS] + [(s, 1, WORLD) for s in resumed])
    assert attempts == expected

    # the cookbook's aligned loss curve: the latest attempt of every step, once
    curve = c.query(cookbook_queries()["loss-curve-aligned"], parameters={"run_id": RELAUNCH}).result_rows
    assert [(step, attempt) for step, attempt, *_ in curve] == [
        (s, 1 if s >= RESUME_FROM else 0) for s in range(LAST_STEP + 1)
    ]
    for step, attempt, loss, ranks, _ in curve:
        offset = RESUMED_OFFSET if attempt else 0.0
        assert loss == pytest.approx(sum(loss_at(step, r) for r in range(WORLD)) / WORLD + offset, rel=1e-12)
        assert ranks == WORLD
    # the raw curve too: each rank's latest value of a repeated step is the second launch's
    raw = c.query(cookbook_queries()["loss-curve"], parameters={"run_id": RELAUNCH}).result_rows
    assert [r[0] for r in raw] == list(range(LAST_STEP + 1))
    for step, loss, ranks in raw:
        offset = RESUMED_OFFSET if step >= RESUME_FROM else 0.0
        assert loss == pytest.approx(sum(loss_at(step, r) for r in range(WORLD)) / WORLD + offset, rel=1e-12)
        assert ranks == WORLD
    every = c.query(cookbook_queries()["all-attempts"], parameters={"run_id": RELAUNCH}).result_rows
    assert [(step, attempt) for step, attempt, *_ in every] == [(s, a) for s, a, _ in expected]


def _status(client: Any, run_id: str) -> str:
    return str(client.command(f"SELECT status FROM rankstream.runs FINAL WHERE run_id = '{run_id}'"))


def _runs_cli(store: Store) -> dict[str, str]:
    out = subprocess.run(
        [RANKSTREAM, "runs", "--since", "5000w", "--format", "json", "--dsn", f"chdb://{store.path}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return {row["run_id"]: row["status"] for row in json.loads(out.stdout)}


def _lost_alert(run_id: str, ts: float) -> dict:
    alert = alert_record(run_id, "vision", "run_lost", 4, list(range(WORLD)))
    return {**alert, "severity": "critical", "ts": ts}


def test_run_lost_marks_the_run_lost_until_an_event_after_it(store: Store) -> None:
    c = store.client
    dead = launch(LOST, "a", range(5), T0, ended=False)
    ended = launch(ENDED, "a", range(5), T0, ended=True)
    produce_events(store.settings, dead + ended)
    wait_until(lambda: _status(c, LOST) == "running" and _status(c, ENDED) == "finished", "both runs")

    lost_at = T0 + 100
    alerts = [_lost_alert(LOST, lost_at), _lost_alert(ENDED, lost_at)]
    produce_records(store.settings, store.settings.topics.alerts, alerts)
    wait_until(lambda: _status(c, LOST) == "lost", "the run marked lost")
    wait_until(lambda: count(c, "alerts", f"WHERE run_id = '{ENDED}'") == 1, "the ended run's alert stored")
    assert _status(c, ENDED) == "finished"  # run_end seen: finished wins over lost
    listed = _runs_cli(store)
    assert listed[LOST] == "lost" and listed[ENDED] == "finished"
    assert c.query(cookbook_queries()["lost-runs"]).result_rows[0][0] == LOST

    # a backlog event of the dead launch (stamped before the alert), stored after it: still lost
    backlog = _event(LOST, 1, "a", 6, "heartbeat", 4, lost_at - 50)
    produce_events(store.settings, [backlog])
    wait_until(lambda: count(c, "events", f"WHERE run_id = '{LOST}' AND seq = 6") == 1, "the backlog event stored")
    assert _status(c, LOST) == "lost"

    # the job came back: an event stamped after the alert
    produce_events(store.settings, [_event(LOST, 0, "a", 6, "step", 5, lost_at + 30, metrics={"loss": 1.0})])
    wait_until(lambda: _status(c, LOST) == "running", "the run running again")
    assert _runs_cli(store)[LOST] == "running"
    assert int(c.command(f"SELECT count() FROM rankstream.runs FINAL WHERE run_id = '{LOST}'")) == 1


# --------------------------------------------------------------------- (b) upgrade of an existing store

OLD_EVENTS = (
    "INSERT INTO rankstream.events (team, run_id, rank, seq, kind, step, ts, host, local_rank, world_size, "
    "n_metrics, tags) SELECT 'vision', 'old', 0, number, 'step', number, "
    "toDateTime64(1750000000 + number, 6, 'UTC'), 'h', 0, 1, 1, map() FROM numbers(10)"
)
OLD_METRICS = (
    "INSERT INTO rankstream.metrics (team, run_id, metric, kind, step, rank, seq, ts, value, host, world_size) "
    "SELECT 'vision', 'old', 'loss', 'step', number, 0, number, toDateTime64(1750000000 + number, 6, 'UTC'), "
    "1.0 / (number + 1), 'h', 1 FROM numbers(10)"
)
OLD_STEPS = (
    "INSERT INTO rankstream.steps (team, run_id, step, world_size, ranks_reported, missing_ranks, complete, "
    "ts_first, ts_last, extra) SELECT 'vision', 'old', number, 1, 1, [], true, "
    "toDateTime64(1750000000 + number, 6, 'UTC'), toDateTime64(1750000000 + number, 6, 'UTC'), '' FROM numbers(5)"
)
OLD_STEP_METRICS = (
    "INSERT INTO rankstream.step_metrics (team, run_id, metric, step, ts_first, mean, min, max, std, argmin, "
    "argmax, n) SELECT 'vision', 'old', 'loss', number, toDateTime64(1750000000 + number, 6, 'UTC'), "
    "1.0 / (number + 1), 1.0 / (number + 1), 1.0 / (number + 1), 0, 0, 0, 1 FROM numbers(5)"
)


def _old_store(path: Path, tmp: Path) -> None:
    """A store as a sink before migration 0003 left it: migrations 0001 and 0002, and rows of run 'old'."""
    port = free_port()
    proc = start_store(path, port, tmp / "old-store.log")
    try:
        client = wait_until(lambda: http_client("127.0.0.1", port), "the old store", 60)
        applied_versions(client)  # creates the migrations table
        for version, sql in migration_files()[:2]:
            assert version in ("0001_init", "0002_no_insert_dedup_log")
            for statement in split_statements(sql):
                client.command(statement)
            client.command(f"INSERT INTO {MIGRATIONS_TABLE} (version) VALUES ('{version}')")
        for insert in (OLD_EVENTS, OLD_METRICS, OLD_STEPS, OLD_STEP_METRICS):
            client.command(insert)
        assert "inc" not in [row[0] for row in client.query("DESCRIBE TABLE rankstream.events").result_rows]
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_an_existing_store_is_upgraded_by_the_next_sink_start_and_keeps_its_rows(
    kafka: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "store"
    _old_store(path, tmp_path)
    sink = SinkProcess(kafka, f"chdb://{path}", tmp_path / "sink.log", "--http-port", "0")
    sink.start()
    try:
        client = http_client(*sink.wait_ready(path))
        versions = client.query(f"SELECT version FROM {MIGRATIONS_TABLE} FINAL ORDER BY version").result_rows
        assert versions == [(v,) for v, _ in migration_files()] and ("0003_incarnations_attempts",) in versions
        where = "WHERE run_id = 'old'"
        before = {"events": 10, "metrics": 10, "steps": 5, "step_metrics": 5}
        assert {table: count(client, table, where) for table in before} == before
        assert client.query(f"SELECT DISTINCT inc FROM rankstream.events FINAL {where}").result_rows == [("",)]
        assert client.query(f"SELECT DISTINCT attempt FROM rankstream.steps FINAL {where}").result_rows == [(0,)]

        # the same run relaunched (seq 0.. again) and resumed (steps 0..4 again): new rows, none replaced
        relaunch = [
            _event("old", 0, "new", seq, "step", seq, T0 + 1000 + seq, metrics={"loss": 2.0}, world_size=1)
            for seq in range(10)
        ]
        produce_events(kafka, relaunch)
        again = [{**step_record("old", s, 1), "restart": 1} for s in range(5)]
        for record in again:
            del record["metrics"]["data_time_s"]  # one step_metrics row per step, as the old rows
        produce_records(kafka, kafka.topics.steps, again)
        after = {"events": 20, "metrics": 20, "steps": 10, "step_metrics": 10}
        wait_until(lambda: {t: count(client, t, where) for t in after} == after, "the new rows beside the old ones")
        incs = client.query(f"SELECT inc, count() FROM rankstream.metrics FINAL {where} GROUP BY inc ORDER BY inc")
        assert incs.result_rows == [("", 10), ("new", 10)]
        attempts = client.query(
            f"SELECT attempt, count() FROM rankstream.step_metrics FINAL {where} GROUP BY attempt ORDER BY attempt"
        )
        assert attempts.result_rows == [(0, 5), (1, 5)]
        assert "applied migrations 0003_incarnations_attempts" in sink.log()
        client.close()
    finally:
        assert sink.stop() == 0
