"""Team from where an event came from (issue 14 item 3): with RANKSTREAM_TEAM the stream worker and the sink
give every run that team, whatever its run_start's meta claims, and count the claims they corrected."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rankstream.config import ConfigError, Settings
from rankstream.dev.synthetic import Fault, generate_run
from rankstream.kafka_access import TeamPrincipal, claim_team, team_grants, team_topics
from rankstream.schema import dumps
from rankstream.sinks.pending import PendingBatch
from rankstream.stream_jobs.pipeline import PartitionedPipeline, SimpleMessage


def test_claim_team_overrides_run_start_only() -> None:
    forged = {"kind": "run_start", "meta": {"team": "a", "run_name": "x"}}
    assert claim_team(forged, "b") == "a"
    assert forged["meta"] == {"team": "b", "run_name": "x"}
    silent = {"kind": "run_start", "meta": {}}
    assert claim_team(silent, "b") is None and silent["meta"]["team"] == "b"  # filled, not a forgery
    honest = {"kind": "run_start", "meta": {"team": "b"}}
    assert claim_team(honest, "b") is None
    step = {"kind": "step", "metrics": {}}
    assert claim_team(step, "b") is None and "meta" not in step
    assert claim_team({"kind": "run_start", "meta": {"team": "a"}}, "") is None  # no team configured


def test_team_setting_is_validated() -> None:
    assert Settings(team="vision-2").team == "vision-2"
    with pytest.raises(ConfigError, match="RANKSTREAM_TEAM"):
        Settings(team="a'b")


def test_team_topics_and_grants() -> None:
    assert team_topics("rankstream", "vision").events == "rankstream.vision.events"
    grants = team_grants("rankstream", TeamPrincipal("vision", "team-vision"))
    assert {(g.operation, g.name) for g in grants if g.resource == "TOPIC"} == {
        ("WRITE", "rankstream.vision.events"),
        ("DESCRIBE", "rankstream.vision.events"),
        ("READ", "rankstream.vision.alerts"),
        ("DESCRIBE", "rankstream.vision.alerts"),
    }
    with pytest.raises(ConfigError):
        TeamPrincipal("a.b", "u")  # a dot would let one team's prefix cover another's topics


def _items(events: list[dict]) -> list[SimpleMessage]:
    return [SimpleMessage(0, i, e["run_id"].encode(), dumps(e)) for i, e in enumerate(events)]


def test_stream_worker_alerts_carry_the_topics_team() -> None:
    events = generate_run("r", world_size=2, steps=40, faults=[Fault("nan_loss", 30)], seed=3, team="a")
    pipeline = PartitionedPipeline(team="b")
    result = pipeline.process(_items(events))
    assert result.alerts and {a["team"] for a in result.alerts} == {"b"}
    claims = sum(1 for e in events if e["kind"] == "run_start" and e["meta"].get("team") == "a")
    assert claims >= 1 and pipeline.stats["team_corrected"] == claims  # every run_start that claimed team a
    honest = PartitionedPipeline()
    assert {a["team"] for a in honest.process(_items(events)).alerts} == {"a"}  # no team set: meta's


def test_sink_rows_carry_the_topics_team() -> None:
    events = generate_run("r", world_size=2, steps=2, seed=4, team="a")
    batch = PendingBatch()
    for i, event in enumerate(events):
        batch.accept("p.b.events", SimpleNamespace(partition=0, offset=i, key=b"r", value=dumps(event)),
                     "p.b.events", "p.b.steps", team="b")  # fmt: skip
    starts = [item for kind, item in batch.items if kind == "event" and item["kind"] == "run_start"]
    assert starts and all(e["meta"]["team"] == "b" for e in starts)
    assert batch.team_corrected == sum(1 for e in events if e["kind"] == "run_start" and e["meta"].get("team"))


def test_all_teams_setting() -> None:
    shared = Settings(team="*")
    assert shared.all_teams and shared.fixed_team == ""
    one = Settings(team="vision")
    assert not one.all_teams and one.fixed_team == "vision"
    assert Settings().fixed_team == "" and not Settings().all_teams


def test_team_of_topic_names_only_team_topics() -> None:
    from rankstream.kafka_access import team_of_topic, team_topic_pattern

    assert team_of_topic("rankstream", "rankstream.vision.events") == ("vision", "events")
    assert team_of_topic("rankstream", "rankstream.nlp-2.alerts") == ("nlp-2", "alerts")
    assert team_of_topic("rankstream", "rankstream.events") is None  # the prefix's own topics
    assert team_of_topic("rankstream", "rankstream.a.b.events") is None  # a team is one segment
    assert team_of_topic("rankstream", "rankstreamXa.events") is None  # the prefix's dot is literal
    assert team_of_topic("rankstream", "rankstream.a.stream-state") is None
    assert team_of_topic("rank.stream", "rank.stream.a.steps") == ("a", "steps")
    import re

    events_only = re.compile(team_topic_pattern("rankstream", ["events"]))
    assert events_only.match("rankstream.a.events") and not events_only.match("rankstream.a.steps")
    with pytest.raises(ValueError, match="topic kinds"):
        team_topic_pattern("rankstream", ["stream-state"])


def test_one_teams_topics_whatever_prefix_form_is_given() -> None:
    """``--prefix rankstream --team vision`` and ``--prefix rankstream.vision --team vision`` name the same topics
    (the team's), in the producer, worker, sink and notifier alike; no team or ``*`` keep the prefix."""
    assert Settings(topic_prefix="rankstream", team="vision").topics.events == "rankstream.vision.events"
    assert Settings(topic_prefix="rankstream.vision", team="vision").topics.events == "rankstream.vision.events"
    assert Settings(topic_prefix="rankstream").topics.events == "rankstream.events"
    assert Settings(topic_prefix="rankstream", team="*").topics.events == "rankstream.events"
    assert Settings(topic_prefix="rankstream", team="vision").team_prefix == "rankstream.vision"
