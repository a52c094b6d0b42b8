"""A shared notifier (``--team '*'``) takes each alert's team from its topic: routing, labels, identities
and dead letters follow the topic's team, whatever the record claims."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import httpx
import pytest

from rankstream.config import Settings
from rankstream.schema import dumps, loads
from rankstream.sinks.notify.config import parse_config
from rankstream.sinks.notify.sender import Sender
from rankstream.sinks.notify.teams import AlertSubscription
from rankstream.sinks.notify.worker import Notifier
from tests.unit.sinks.notify.conftest import alert_record
from tests.unit.sinks.notify.test_worker import FakeProducer

Record = namedtuple("Record", "topic partition offset key value timestamp")


def test_legacy_subscription_is_the_prefix_alerts_topic() -> None:
    sub = AlertSubscription("p")
    assert sub.topics == ("p.alerts",) and sub.pattern is None and sub.matching(["p.a.alerts"]) == ()
    assert sub.default_group == "p.notify"
    assert sub.team_of("p.alerts") == "" and sub.dlq_of("p.alerts") == "p.dlq"


def test_one_team_reads_its_topic_under_the_shared_or_its_own_prefix() -> None:
    shared = AlertSubscription("p", "vision")
    assert shared.topics == ("p.vision.alerts",) and shared.default_group == "p.vision.notify"
    assert shared.team_of("p.vision.alerts") == "vision" and shared.dlq_of("p.vision.alerts") == "p.vision.dlq"
    own = AlertSubscription("p.vision", "vision")  # how per-team workers and sinks are run
    assert own.topics == ("p.vision.alerts",) and own.default_group == "p.vision.notify"
    assert own.dlq_of("p.vision.alerts") == "p.vision.dlq"


def test_every_team_subscribes_by_pattern() -> None:
    import re

    sub = AlertSubscription.of(Settings(topic_prefix="p", team="*"))
    assert sub.topics == () and sub.pattern is not None and sub.default_group == "p.teams-notify"
    assert sub.matching(["p.a.alerts", "p.alerts", "p.b.dlq", "p.c.alerts"]) == ("p.a.alerts", "p.c.alerts")
    pattern = re.compile(sub.pattern)
    assert pattern.match("p.a.alerts") and pattern.match("p.new-team.alerts")
    assert not pattern.match("p.alerts") and not pattern.match("p.a.events") and not pattern.match("q.a.alerts")
    assert sub.team_of("p.b.alerts") == "b" and sub.dlq_of("p.b.alerts") == "p.b.dlq"


class TopicsConsumer:
    """Hands out records of several topics once; records commits."""

    def __init__(self, recs: list[Record]) -> None:
        self.pending = list(recs)
        self.commits: list[dict[tuple[str, int], int]] = []

    def poll(self, timeout_ms: int) -> dict[Any, list[Record]]:
        out: dict[Any, list[Record]] = {}
        for rec in self.pending:
            out.setdefault((rec.topic, rec.partition), []).append(rec)
        self.pending = []
        return out

    def commit(self, offsets: dict[Any, Any]) -> None:
        self.commits.append({(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()})

    def close(self, autocommit: bool = False) -> None:
        pass


ROUTED = {
    "group_wait_s": 0,
    "receivers": {
        "am": {"kind": "alertmanager", "url": "http://am.test"},
        "hook_a": {"kind": "webhook", "url": "http://hooks.test/a"},
        "hook_b": {"kind": "webhook", "url": "http://hooks.test/b"},
    },
    "routes": [
        {"receivers": ["am"]},
        {"match": {"team": "a"}, "receivers": ["hook_a"]},
        {"match": {"team": "b"}, "receivers": ["hook_b"]},
    ],
}


def shared_notifier(recs: list[Record]) -> tuple[Notifier, dict[str, list[Any]], TopicsConsumer, FakeProducer]:
    posted: dict[str, list[Any]] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        posted.setdefault(request.url.path, []).append(loads(request.content))
        return httpx.Response(200)

    cfg = parse_config(ROUTED, env={})
    n = Notifier(
        Settings(topic_prefix="p", team="*"),
        cfg,
        sender=Sender(cfg, httpx.Client(transport=httpx.MockTransport(handler))),
    )
    consumer, producer = TopicsConsumer(recs), FakeProducer()
    n._consumer, n._producer = consumer, producer
    n.topics = ("p.a.alerts", "p.b.alerts")  # what TeamTopicWatch found
    return n, posted, consumer, producer


def rec(topic: str, offset: int, value: dict[str, Any] | bytes) -> Record:
    raw = value if isinstance(value, bytes) else dumps(value)
    return Record(topic, 0, offset, b"run", raw, 1_700_000_000_000)


def test_each_team_is_routed_by_its_topic_and_a_forged_team_is_corrected() -> None:
    honest_a = alert_record(run_id="shared-run", team="a", name="run-of-a")
    forged_b = alert_record(run_id="shared-run", team="a", name="run-of-b")  # b's worker topic, claims a
    n, posted, consumer, _ = shared_notifier([rec("p.a.alerts", 0, honest_a), rec("p.b.alerts", 0, forged_b)])
    n.step()
    hook_a = [a for body in posted["/a"] for a in body["alerts"]]
    hook_b = [a for body in posted["/b"] for a in body["alerts"]]
    assert [(a["team"], a["run_id"]) for a in hook_a] == [("a", "shared-run")]
    assert [(a["team"], a["run_id"]) for a in hook_b] == [("b", "shared-run")]  # the topic's team, not the claim
    am = [el["labels"] for body in posted["/api/v2/alerts"] for el in body]
    # same run_id and alert_id in both teams: two alerts, neither deduplicated away nor named after the other's run
    assert sorted((lab["team"], lab["run_name"]) for lab in am) == [("a", "run-of-a"), ("b", "run-of-b")]
    assert n.stats.team_corrected == 1 and n.stats.teams == {"a": 1, "b": 1} and n.stats.duplicates == 0
    assert consumer.commits[-1] == {("p.a.alerts", 0): 1, ("p.b.alerts", 0): 1}


def test_a_resolve_closes_only_its_own_teams_alert() -> None:
    fired_b = alert_record(run_id="r", team="b", name="of-b")
    fired_a = alert_record(run_id="r", team="a", name="of-a")  # same alert_id, fired last
    resolved_b = {**alert_record(run_id="r", team="b", state="resolved"), "message": "Resolved."}
    n, posted, consumer, _ = shared_notifier([rec("p.b.alerts", 0, fired_b), rec("p.a.alerts", 0, fired_a)])
    n.step()
    consumer.pending = [rec("p.b.alerts", 1, resolved_b)]  # a later poll: the sender's memory decides
    n.step()
    first_b, first_a, closing = [el for body in posted["/api/v2/alerts"] for el in body]
    assert [el["labels"]["team"] for el in (first_b, first_a, closing)] == ["b", "a", "b"]
    # the labels and start b's alert fired with, not a's (the last fired under that alert_id)
    assert closing["labels"] == first_b["labels"] and closing["startsAt"] == first_b["startsAt"]
    assert closing["labels"]["run_name"] == "of-b" and closing["endsAt"] < first_b["endsAt"]


def test_dead_letters_go_to_the_teams_own_dlq() -> None:
    n, _, consumer, producer = shared_notifier([rec("p.b.alerts", 0, b"{not json"), rec("p.a.alerts", 0, b"[]")])
    n.step()
    assert sorted((letter["topic"], letter["source_topic"]) for letter in producer.sent) == [
        ("p.a.dlq", "p.a.alerts"),
        ("p.b.dlq", "p.b.alerts"),
    ]
    assert n.stats.invalid == 2 and consumer.commits[-1] == {("p.a.alerts", 0): 1, ("p.b.alerts", 0): 1}


@pytest.mark.parametrize("team", ["", "b"])
def test_without_every_team_one_topic_and_its_team(team: str) -> None:
    settings = Settings(topic_prefix="p", team=team)
    n = Notifier(settings, parse_config(ROUTED, env={}))
    assert n.topics == n.subscription.topics == (("p.b.alerts",) if team else ("p.alerts",))
    assert n.subscription.team_of(n.subscription.topics[0]) == team


def test_a_shared_notifier_subscribes_to_the_team_topics_it_finds() -> None:
    from rankstream.sinks.notify.consumer import TeamTopicWatch

    class Listing:
        def __init__(self) -> None:
            self.on_broker = {"p.alerts", "p.a.alerts", "p.a.events", "q.b.alerts"}
            self.subscribed: list[list[str]] = []

        def topics(self) -> set[str]:
            return set(self.on_broker)

        def subscribe(self, topics: list[str], listener: Any) -> None:
            self.subscribed.append(topics)

    n = Notifier(Settings(topic_prefix="p", team="*"), parse_config(ROUTED, env={}))
    assert n.topics == ()  # none known before the first lookup: no subscription, no poll
    consumer, watch = Listing(), TeamTopicWatch(n, every_s=0)
    watch.check(consumer)
    assert n.topics == ("p.a.alerts",) and consumer.subscribed == [["p.a.alerts"]]
    watch.check(consumer)
    assert len(consumer.subscribed) == 1  # nothing new: no rejoin
    consumer.on_broker.add("p.new-team.alerts")
    watch.check(consumer)
    assert consumer.subscribed[-1] == ["p.a.alerts", "p.new-team.alerts"]
