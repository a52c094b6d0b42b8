"""Team on every row without Kafka or a store: which runs are followed, when they are looked up, what is re-stamped,
and the keep-alive poll of an outage that leaves a rebalance's records in Kafka."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from rankstream.schema import decode_event, encode_event
from rankstream.sinks import teams, writer
from rankstream.sinks.outage import Retrier
from rankstream.sinks.store.tables import column_names
from rankstream.sinks.teams import RESTAMP_TABLES, TeamlessRuns, restamp_sql
from rankstream.sinks.writer import BatchWriter


def _event(run_id: str, rank: int, seq: int, kind: str = "step", team: str | None = None) -> tuple[str, dict]:
    raw: dict[str, Any] = {
        "v": 1, "kind": kind, "run_id": run_id, "rank": rank, "world_size": 2, "host": "h", "step": seq,
        "ts": 100.0 + seq, "seq": seq, "metrics": {"loss": 1.0}, "tags": {},
    }  # fmt: skip
    if team is not None:
        raw["meta"] = {"team": team}
    return "event", decode_event(encode_event(raw))


def _step(run_id: str, step: int) -> tuple[str, dict]:
    return "step", {
        "v": 1, "run_id": run_id, "step": step, "restart": 0, "world_size": 2, "ranks_reported": 2,
        "missing_ranks": [], "complete": True, "ts_first": 100.0 + step, "ts_last": 100.5 + step, "metrics": {},
    }  # fmt: skip


class _Store:
    """Answers the runs lookups from ``runs`` (FINAL rows) and ``teams`` (any version); records re-stamps."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.teams: dict[str, str] = {}
        self.restamped: list[dict[str, Any]] = []
        self.queries = 0

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        self.queries += 1
        ids = (parameters or {}).get("ids", [])
        if "argMax(team" in sql:
            return SimpleNamespace(result_rows=[(i, self.teams[i]) for i in ids if i in self.teams])
        if "DISTINCT run_id" in sql:
            return SimpleNamespace(result_rows=[("left-behind",)])
        names = column_names("runs")
        return SimpleNamespace(result_rows=[tuple(self.runs[i][n] for n in names) for i in ids if i in self.runs])

    def command(self, sql: str, parameters: dict[str, Any], settings: dict[str, Any]) -> Any:
        assert settings == {"insert_deduplicate": 0}
        self.restamped.append({"sql": sql, **parameters})
        return SimpleNamespace(written_rows=0)


def _runs_row(run_id: str, team: str, updated_at: int = 5) -> dict[str, Any]:
    row = dict.fromkeys(column_names("runs"), "")
    row.update(run_id=run_id, team=team, world_size=2, status="running", started_at=1, ended_at=None)
    row["updated_at"] = updated_at
    return row


def test_rows_of_a_run_whose_team_is_unknown_are_followed_and_re_stamped_once_its_run_start_comes() -> None:
    store = _Store()
    w = BatchWriter(store)
    first = [_event("r", 1, 0), _step("r", 0), _event("known", 0, 0, "run_start", team="nlp")]
    assert w.unknown_runs(first) == ["r"]  # run_start in the same batch: no lookup for "known"
    w.resolve_runs(["r"])
    batch = w.build(first)
    teams_of_steps = batch.columns["steps"][column_names("steps").index("team")]
    assert teams_of_steps == [""] and "r" in w.teamless and "known" not in w.teamless
    w.build([_event("r", 0, 0, "run_start", team="vision"), _event("r", 0, 1)])
    assert w.restamp_due(force=True)
    assert w.restamp() == 1
    assert {tuple(c["ids"]) for c in store.restamped} == {("r",)}
    assert {tuple(c["teams"]) for c in store.restamped} == {("vision",)}
    assert len(store.restamped) == len(RESTAMP_TABLES) and store.restamped[0]["sql"].startswith(
        "INSERT INTO rankstream.runs"
    )
    assert not w.teamless and not w.restamp_due(force=True)


def test_another_sinks_run_start_is_found_in_the_store_with_a_doubling_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(writer, "time", SimpleNamespace(monotonic=lambda: now[0]))
    store = _Store()
    w = BatchWriter(store)
    w.build([_step("r", 0)])
    assert not w.restamp_due(force=True)  # the first lookup waits FIRST_LOOKUP_S
    now[0] += teams.FIRST_LOOKUP_S
    assert w.restamp_due(force=True)
    assert w.restamp() == 0 and store.queries == 1  # not in the store yet: nothing re-stamped
    now[0] += teams.FIRST_LOOKUP_S
    assert not w.restamp_due(force=True)  # next lookup after twice the interval
    now[0] += teams.FIRST_LOOKUP_S
    store.runs["r"] = _runs_row("r", "", updated_at=9)  # its latest row has no team (a run_end of a third sink)
    store.teams["r"] = "vision"  # but its run_start's row has
    assert w.restamp_due(force=True)
    assert w.restamp() == 1
    assert w.runs.team("r") == "vision" and store.restamped[0]["teams"] == ["vision"]
    w.build([_step("r", 1)])
    assert not w.teamless  # later rows get the team at once


def test_runs_without_a_team_are_given_up_after_a_while_and_the_tracker_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracker = TeamlessRuns()
    tracker.note(["a", "b"], 0.0)
    tracker.note(["a"], 50.0)  # noted again: still followed since 0
    assert tracker.expired(teams.GIVE_UP_S) == [] and tracker.expired(teams.GIVE_UP_S + 1) == ["a", "b"]
    assert not tracker
    monkeypatch.setattr(teams, "MAX_TRACKED", 3)
    tracker.note([f"r{i}" for i in range(5)], 0.0)
    assert tracker.runs() == ["r2", "r3", "r4"]
    store = _Store()
    w = BatchWriter(store)
    assert w.adopt_stored_teamless() == 1 and "left-behind" in w.teamless


def test_the_re_stamp_copies_every_column_and_replaces_only_the_team() -> None:
    for table in RESTAMP_TABLES:
        sql = restamp_sql(table)
        names = column_names(table)
        assert f"INSERT INTO rankstream.{table} ({', '.join(names)}) SELECT " in sql
        select = sql.split(" SELECT ", 1)[1].split(" FROM ", 1)[0]
        assert select.count(",") == len(names) - 1 + 3  # transform(run_id, ids, teams, '') has three commas
        assert sql.endswith("FINAL WHERE run_id IN {ids:Array(String)} AND team = ''")


class _Consumer:
    """A consumer whose first poll, like one right after a rebalance, returns records of unpaused partitions."""

    def __init__(self) -> None:
        self.tp = ("p.events", 1)  # a TopicPartition is a hashable tuple too
        self.paused: set[Any] = set()
        self.seeks: list[tuple[Any, int]] = []
        self.polls = 0
        self.paused_at_poll: list[bool] = []

    def assignment(self) -> set[Any]:
        return {self.tp}

    def pause(self, *tps: Any) -> None:
        self.paused.update(tps)

    def resume(self, *tps: Any) -> None:
        self.paused.difference_update(tps)

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))

    def poll(self, timeout_ms: int) -> dict[Any, list[Any]]:
        self.polls += 1
        self.paused_at_poll.append(self.tp in self.paused)
        if self.polls == 1:
            self.paused.clear()  # the rebalance: a new assignment starts unpaused
            return {self.tp: [SimpleNamespace(offset=o) for o in (40, 41, 42)]}
        return {}


def test_an_outage_wait_leaves_the_records_a_rebalance_brings_in_kafka_and_pauses_again() -> None:
    outages: list[int] = []
    retrier = Retrier(lambda: outages.append(1))
    consumer = _Consumer()
    retrier.consumer = consumer
    calls = [0]

    def insert() -> str:
        calls[0] += 1
        if consumer.polls < 2:
            raise ConnectionError("store down")
        return "stored"

    assert retrier.with_store(insert, "insert") == "stored"
    assert consumer.seeks == [(consumer.tp, 40)] and retrier.rewound == 3
    assert consumer.paused_at_poll[:2] == [True, True]  # paused again right after the rebalance's poll
    assert consumer.paused == set()  # resumed once the store answered
    assert outages == [1] and calls[0] >= 2


def test_partitions_a_rebalance_assigns_during_an_outage_are_paused_before_anything_is_fetched() -> None:
    retrier = Retrier(lambda: None)
    consumer = _Consumer()
    retrier.consumer = consumer
    retrier.keep_paused({consumer.tp})
    assert consumer.paused == set()  # no outage: a new assignment is consumed as usual
    seen: list[bool] = []

    def insert() -> str:
        if not seen:
            seen.append(retrier.waiting)
            raise ConnectionError("store down")
        consumer.paused.clear()  # a rebalance hands the partition out again, unpaused ...
        retrier.keep_paused({consumer.tp})  # ... and the listener pauses it at once
        seen.append(consumer.tp in consumer.paused)
        return "stored"

    assert retrier.with_store(insert, "insert") == "stored"
    assert seen == [False, True] and not retrier.waiting and consumer.paused == set()


class _RewindConsumer:
    """Positions kept across a rebalance (kafka-python 3); committed offsets per partition."""

    def __init__(self) -> None:
        self.committed_offsets: dict[Any, int | None] = {("e", 0): 120, ("e", 1): None}
        self.positions: dict[Any, int | str] = {("e", 0): 400, ("e", 1): 50, ("e", 2): 70}

    def assignment(self) -> set[Any]:
        return {("e", 0), ("e", 1)}

    def committed(self, tp: Any) -> int | None:
        return self.committed_offsets[tp]

    def seek(self, tp: Any, offset: int) -> None:
        self.positions[tp] = offset

    def seek_to_beginning(self, tp: Any) -> None:
        self.positions[tp] = "beginning"


def test_after_a_dropped_batch_the_new_assignment_is_read_again_from_the_committed_offsets() -> None:
    retrier = Retrier(lambda: None)
    consumer = _RewindConsumer()
    retrier.consumer = consumer
    assert not retrier.rewound_after_poll()  # nothing asked: the poll's records are kept
    retrier.rewind_after_poll([("e", 0), ("e", 1), ("e", 2)])  # from the rebalance callback
    assert consumer.positions[("e", 0)] == 400  # not inside the callback
    assert retrier.rewound_after_poll()  # after the poll: drop its records, positions go back
    assert consumer.positions == {("e", 0): 120, ("e", 1): "beginning", ("e", 2): 70}  # e/2 is no longer ours
    assert not retrier.rewound_after_poll()
