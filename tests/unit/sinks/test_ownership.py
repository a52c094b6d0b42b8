"""A run_id belongs to one team (issue 14): who owns a run, which records of a batch are refused, the topic routes of
a shared sink, and the pending batch of a shared sink (every item with its topic's team, dead letters to its DLQ)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from rankstream.config import Settings
from rankstream.schema import dumps, encode_event, loads
from rankstream.sinks.ownership import Owners, claim_runs, foreign_reason
from rankstream.sinks.pending import PendingBatch
from rankstream.sinks.routing import Router, TopicRoute
from rankstream.sinks.store.tables import column_names
from rankstream.sinks.writer import BatchWriter


def test_a_run_belongs_to_the_first_team_that_claims_it() -> None:
    claims = [("x", "a"), ("x", "b"), ("y", "b"), ("x", "a"), ("y", "a"), ("z", "b")]
    refused, claimed = claim_runs(claims, {"z": "a"})
    assert refused == [1, 4, 5]  # b's x after a's claim, a's y after b's, b's z owned by a in the store
    assert claimed == {"x": "a", "y": "b"}  # z was already owned: nothing new


def test_a_run_stored_without_a_team_is_adopted_and_legacy_claims_are_not_decided() -> None:
    refused, claimed = claim_runs([("old", "b"), ("old", "a"), ("free", "")], {"old": "", "free": "a"})
    assert refused == [1] and claimed == {"old": "b"}  # '' owner: the first team adopts it
    assert claim_runs([("r", ""), ("r", "")], {"r": "a"}) == ([], {})  # legacy mode: no team, no decision


def test_the_reason_does_not_name_the_owner() -> None:
    assert foreign_reason("run-7") == "run_id 'run-7' belongs to another team"


def test_owners_are_bounded_least_recently_used_first() -> None:
    owners = Owners(capacity=2)
    owners.put("a", "t1")
    owners.put("b", "t2")
    assert owners.get("a") == "t1"  # a is now the most recent
    owners.put("c", "t3")
    assert (owners.get("a"), owners.get("b"), owners.get("c"), len(owners)) == ("t1", "", "t3", 2)


def test_routes_of_a_shared_a_one_team_and_a_legacy_sink() -> None:
    shared = Router(Settings(topic_prefix="p", team="*"))
    assert shared.topics == () and shared.pattern is not None
    assert shared.route("p.vision.steps") == TopicRoute("steps", "vision", "p.vision.dlq")
    assert shared.route("p.nlp.events") == TopicRoute("events", "nlp", "p.nlp.dlq")
    one = Router(Settings(topic_prefix="p.a", team="a"))
    assert one.pattern is None and one.topics == ("p.a.events", "p.a.steps", "p.a.alerts")
    assert one.route("p.a.alerts") == TopicRoute("alerts", "a", "p.a.dlq")
    legacy = Router(Settings(topic_prefix="p"))
    assert legacy.route("p.events") == TopicRoute("events", "", "p.dlq")


def _record(topic: str, offset: int, value: bytes | None) -> Any:
    return SimpleNamespace(topic=topic, partition=0, offset=offset, key=b"k", value=value)


def _raw(run_id: str, seq: int, kind: str = "step", team: str | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "v": 1, "kind": kind, "run_id": run_id, "rank": 0, "world_size": 1, "host": "h", "step": seq,
        "ts": 100.0 + seq, "seq": seq, "metrics": {"loss": 1.0}, "tags": {},
    }  # fmt: skip
    if team is not None:
        raw["meta"] = {"team": team}
    return raw


def _alert(run_id: str, team: str) -> bytes:
    return dumps(
        {"v": 1, "alert_id": "x1", "run_id": run_id, "team": team, "rule": "nan", "severity": "warning", "ts": 101.0}
    )


def _shared_batch(messages: list[tuple[str, bytes | None]]) -> PendingBatch:
    router = Router(Settings(topic_prefix="p", team="*"))
    pending = PendingBatch()
    for offset, (topic, value) in enumerate(messages):
        route = router.route(topic)
        pending.add(topic, _record(topic, offset, value), route.kind, route.team, route.dlq)
    return pending


def test_a_shared_batch_gives_every_item_its_topics_team_and_dead_letters_go_to_the_teams_dlq() -> None:
    pending = _shared_batch(
        [
            ("p.a.events", encode_event(_raw("ra", 0, "run_start", team="b"))),  # forged: claims team b
            ("p.b.events", encode_event(_raw("rb", 0))),
            ("p.b.alerts", _alert("rb", "a")),  # an alert claiming team a on b's topic
            ("p.b.events", b"{broken"),
            ("p.a.steps", None),
        ]
    )
    assert pending.teams == ["a", "b", "b"] and pending.team_corrected == 1
    assert pending.items[0][1]["meta"]["team"] == "a" and pending.items[2][1]["team"] == "b"
    assert [letter.topic for letter in pending.dlq] == ["p.b.dlq", "p.a.dlq"]
    assert loads(pending.dlq[1].value)["source_topic"] == "p.a.steps"
    pending.drop([(1, foreign_reason("rb"))])
    assert pending.teams == ["a", "b"] and [item[1]["run_id"] for item in pending.items] == ["ra", "rb"]
    assert [r.offset for r in pending.origins] == [0, 2]  # items, origins and teams stay aligned
    letter = pending.dlq[-1]
    assert letter.topic == "p.b.dlq" and loads(letter.value)["reason"] == "run_id 'rb' belongs to another team"


class _Store:
    """Knows run 'owned' (team a) in ``runs``, 'rows-only' (team a) in events rows only, 'legacy' without a team."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def query(self, sql: str, parameters: dict[str, Any]) -> Any:
        self.queries.append(sql)
        ids = parameters["ids"]
        if "UNION ALL" in sql:
            return SimpleNamespace(result_rows=[(i, "a") for i in ids if i == "rows-only"])
        if "argMax(team" in sql:
            return SimpleNamespace(result_rows=[])
        names = column_names("runs")
        rows = []
        for run_id in ids:
            if run_id in ("owned", "legacy"):
                row = dict.fromkeys(names, "")
                row.update(run_id=run_id, team="a" if run_id == "owned" else "", world_size=1, status="running")
                row.update(started_at=1, ended_at=None, updated_at=5)
                rows.append(tuple(row[n] for n in names))
        return SimpleNamespace(result_rows=rows)


def _events_of(pending: PendingBatch) -> list[tuple[str, str]]:
    return [(item[1]["run_id"], team) for item, team in zip(pending.items, pending.teams, strict=True)]


def test_the_writer_refuses_another_teams_runs_and_stamps_every_row_with_the_topics_team() -> None:
    writer = BatchWriter(_Store())
    pending = _shared_batch(
        [
            ("p.b.events", encode_event(_raw("owned", 1))),  # a's run in the store
            ("p.b.events", encode_event(_raw("rows-only", 1))),  # a's rows, no run_start stored
            ("p.b.events", encode_event(_raw("legacy", 1))),  # stored without a team: b adopts it
            ("p.b.events", encode_event(_raw("new", 0, "run_start", team="a"))),  # new run, forged team
            ("p.a.events", encode_event(_raw("new", 1))),  # a reuses b's new run in the same batch
            ("p.a.events", encode_event(_raw("owned", 2))),  # the owner's own record
        ]
    )
    unknown = writer.unknown_runs(pending.items, pending.teams)
    assert unknown == ["legacy", "new", "owned", "rows-only"]  # a run_start in the batch is looked up too
    writer.resolve_runs(unknown, rows=True)
    refused = writer.refuse_foreign(pending.items, pending.teams)
    assert [index for index, _ in refused] == [0, 1, 4]
    pending.drop(refused)
    assert _events_of(pending) == [("legacy", "b"), ("new", "b"), ("owned", "a")]
    assert [letter.topic for letter in pending.dlq] == ["p.b.dlq", "p.b.dlq", "p.a.dlq"]
    assert "legacy" in writer.teamless and writer.team_of("legacy") == "b"  # adopted rows get re-stamped
    batch = writer.build(pending.items, pending.teams)
    names = column_names("events")
    events = dict(zip(*(batch.columns["events"][names.index(c)] for c in ("run_id", "team")), strict=True))
    assert events == {"legacy": "b", "new": "b", "owned": "a"}
    runs = batch.columns["runs"]
    # run_id, team: the forged claim never reaches a row
    assert list(zip(runs[0], runs[1], strict=True)) == [("new", "b")]
    assert writer.unknown_runs(pending.items, pending.teams) == []  # every owner now known to this sink


class _Consumer:
    """Unassigned; the broker has ``existing`` topics, each with one partition."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.unsubscribed = 0

    def assignment(self) -> set[Any]:
        return set()

    def topics(self) -> set[str]:
        return set(self.existing)

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0} if topic in self.existing else set()

    def unsubscribe(self) -> None:
        self.unsubscribed += 1


def test_a_pattern_subscription_rejoins_only_when_a_matching_topic_exists() -> None:
    import logging

    from rankstream.sinks.rejoin import RejoinWatch

    router = Router(Settings(topic_prefix="p", team="*"))
    resubscribed: list[int] = []
    consumer = _Consumer({"p.events", "other.a.events"})  # no team topic yet: idle on purpose
    watch = RejoinWatch(
        router.topics,
        lambda: resubscribed.append(1),
        first_wait_s=0.0,
        log=logging.getLogger("test"),
        who="sink",
        pattern=router.pattern,
    )
    watch.check(consumer)
    watch.check(consumer)
    assert resubscribed == [] and consumer.unsubscribed == 0
    consumer.existing.add("p.vision.steps")  # a team's topic the group forgot to assign
    watch.check(consumer)
    assert resubscribed == [1] and consumer.unsubscribed == 1


class _Subscribing(_Consumer):
    """Records subscriptions; ``topics()`` fails while ``down``."""

    def __init__(self, existing: set[str]) -> None:
        super().__init__(existing)
        self.down = False
        self.subscriptions: list[tuple[list[str], Any]] = []

    def topics(self) -> set[str]:
        if self.down:
            from kafka.errors import KafkaTimeoutError

            raise KafkaTimeoutError("no metadata")
        return super().topics()

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.subscriptions.append((topics, listener))


def test_a_shared_sink_subscribes_to_the_team_topics_it_finds_and_to_new_ones_later() -> None:
    from rankstream.sinks.worker_rebalance import TeamTopicWatch, subscribe

    flushed: list[int] = []
    worker = SimpleNamespace(
        router=Router(Settings(topic_prefix="p", team="*")),
        rebalance_listener=object(),
        flush=lambda: flushed.append(1),
    )
    consumer = _Subscribing({"p.events", "p.a.events", "p.a.dlq", "p.a.stream-state"})
    subscribe(consumer, worker)  # type: ignore[arg-type]
    assert consumer.subscriptions == []  # no team topic known yet: no subscription (kafka-python refuses an empty one)
    watch = TeamTopicWatch(worker, every_s=0.0)  # type: ignore[arg-type]
    watch.check(consumer)
    assert consumer.subscriptions == [(["p.a.events"], worker.rebalance_listener)]
    watch.check(consumer)
    assert len(consumer.subscriptions) == 1 and flushed == [1]  # nothing new: no re-subscription, no flush
    consumer.existing |= {"p.b.events", "p.b.steps", "p.b.alerts"}
    consumer.down = True
    watch.check(consumer)  # the lookup failed: kept as it was, tried again next time
    consumer.down = False
    watch.check(consumer)
    topics, listener = consumer.subscriptions[-1]
    assert topics == ["p.a.events", "p.b.alerts", "p.b.events", "p.b.steps"] and listener is worker.rebalance_listener
    assert flushed == [1, 1]  # the pending batch is stored before each re-subscription
    assert worker.router.route("p.b.steps") == TopicRoute("steps", "b", "p.b.dlq")
