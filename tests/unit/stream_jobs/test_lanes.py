"""The shared worker's per-topic lanes without Kafka: which topics are teams', what stays apart per team."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rankstream.schema import dumps, loads
from rankstream.stream_jobs.detector_state import SavedStates, state_topic_of
from rankstream.stream_jobs.lanes import Lane, partitions_by_lane
from rankstream.stream_jobs.pipeline import PartitionedPipeline, Result, SimpleMessage
from rankstream.stream_jobs.prom import WorkerMetrics, worker_health
from rankstream.stream_jobs.publisher import Publisher
from rankstream.stream_jobs.run_board import RunBoard
from rankstream.stream_jobs.team_watch import team_events_topics
from rankstream.topics import Topics


def test_only_team_events_topics_of_the_prefix_are_lanes() -> None:
    names = [
        "p.a.events",
        "p.a.steps",
        "p.a.stream-state",
        "p.b-2.events",
        "p.events",  # the prefix's own topic: no team
        "q.c.events",  # another prefix
        "p.x.y.events",  # a team name is one segment
    ]
    found = team_events_topics("p", names)
    assert sorted(found) == ["a", "b-2"]
    assert found["a"] == Topics("p.a")
    assert state_topic_of(found["b-2"]) == "p.b-2.stream-state"


class _Sent:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None) -> Any:
        self.records.append((topic, key, value))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _lane(team: str, sent: _Sent) -> Lane:
    topics = Topics(f"p.{team}")
    saved, loaded = SavedStates(3600.0), {0, 1, 2}
    pipeline = PartitionedPipeline(source_topic=topics.events, state_lookup=saved.take, team=team)
    publisher = Publisher(topics, state_topic_of(topics), sent.send, lambda p, o: None, loaded.__contains__, team=team)
    return Lane(team, topics, pipeline, publisher, saved, loaded)


def test_a_lanes_alerts_carry_its_team_and_go_to_its_topics_whatever_the_run_claimed() -> None:
    sent = _Sent()
    lane = _lane("a", sent)
    alerts = [{"run_id": "r", "alert_id": "x", "team": "b"}, {"run_id": "r", "alert_id": "y", "team": ""}]
    asyncio.run(lane.publisher.publish(Result(steps=[{"run_id": "r", "step": 1}], alerts=alerts)))
    by_topic = {topic: [loads(v or b"") for t, _, v in sent.records if t == topic] for topic, _, _ in sent.records}
    assert set(by_topic) == {"p.a.steps", "p.a.alerts"}
    assert [a["team"] for a in by_topic["p.a.alerts"]] == ["a", "a"]
    assert alerts[0]["team"] == "b"  # the result itself is not changed (the run board reads it too)


def test_a_run_start_read_in_a_lane_gets_the_lanes_team_and_the_claim_is_counted() -> None:
    lane = _lane("a", _Sent())
    start = {
        "v": 1, "kind": "run_start", "run_id": "r", "rank": 0, "world_size": 1, "seq": 0, "ts": 1.0,
        "meta": {"run_name": "n", "team": "b"},
    }  # fmt: skip
    lane.pipeline.process([SimpleMessage(0, 0, b"r", dumps(start))])
    assert lane.pipeline.stats["team_corrected"] == 1
    assert lane.pipeline.run_labels("r") == ("n", "a")


def test_revoked_partitions_are_grouped_by_lane_and_other_topics_left_out() -> None:
    sent = _Sent()
    lanes = {lane.source: lane for lane in (_lane("a", sent), _lane("b", sent))}
    grouped = partitions_by_lane(lanes, [("p.a.events", 0), ("p.b.events", 0), ("p.b.events", 2), ("p.c.events", 1)])
    assert grouped == {"p.a.events": {0}, "p.b.events": {0, 2}}
    lanes["p.b.events"].revoke({0, 2})
    assert lanes["p.b.events"].loaded == {1}
    assert lanes["p.a.events"].loaded == {0, 1, 2}


def _samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_two_teams_with_the_same_run_id_are_two_runs_on_metrics_and_health_adds_lanes_up() -> None:
    sent = _Sent()
    lanes = [_lane("a", sent), _lane("b", sent)]
    lanes[0].pipeline.stats["events"] = 5
    lanes[1].pipeline.stats["events"] = 7
    lanes[1].pipeline.stats["team_corrected"] = 1
    board = RunBoard()
    step = {"run_id": "r", "step": 3, "ts_last": 1.0, "world_size": 2, "metrics": {"loss": {"mean": 1.0}}}
    board.observe([step], [], now=1.0, labels=lambda run_id: ("name-a", "b"), team="a")
    board.observe([{**step, "metrics": {"loss": {"mean": 9.0}}}], [], now=1.0, team="b")
    samples = _samples(WorkerMetrics(board, worker_health(lambda: lanes)))
    assert samples[("rankstream_run_loss", (("run_id", "r"), ("run_name", "name-a"), ("team", "a")))] == 1.0
    assert samples[("rankstream_run_loss", (("run_id", "r"), ("run_name", ""), ("team", "b")))] == 9.0
    assert samples[("rankstream_worker_events_total", ())] == 12
    assert samples[("rankstream_worker_team_corrected_total", ())] == 1
    assert samples[("rankstream_worker_lanes", ())] == 2


class _Conductor:
    def __init__(self, subscribed: set[str]) -> None:
        self._topic_name_index = {t: set() for t in subscribed}
        self.flagged = 0

    def _flag_changes(self) -> None:
        self.flagged += 1


class _App:
    def __init__(self, subscribed: set[str], rebalancing: bool) -> None:
        self.topics = _Conductor(subscribed)
        self.rebalancing = rebalancing


def test_a_lane_left_out_of_the_subscription_is_asked_for_again_but_not_during_a_rebalance() -> None:
    from rankstream.stream_jobs.batch_drain import resubscribe_missing

    settled = _App({"p.a.events", "p.b.events"}, rebalancing=False)
    assert resubscribe_missing(settled, ["p.a.events", "p.b.events"]) == []
    assert settled.topics.flagged == 0
    dropped = _App({"p.a.events"}, rebalancing=False)
    assert resubscribe_missing(dropped, ["p.a.events", "p.b.events"]) == ["p.b.events"]
    assert dropped.topics.flagged == 1
    busy = _App({"p.a.events"}, rebalancing=True)
    assert resubscribe_missing(busy, ["p.a.events", "p.b.events"]) == ["p.b.events"]
    assert busy.topics.flagged == 0


def test_the_consumer_group_of_one_team_a_shared_worker_and_a_prefix_only_worker() -> None:
    from rankstream.config import Settings
    from rankstream.stream_jobs.app import default_group

    assert default_group(Settings(topic_prefix="p")) == "p-stream"
    assert default_group(Settings(topic_prefix="p", team="a")) == "p.a-stream"
    assert default_group(Settings(topic_prefix="p.a", team="a")) == "p.a-stream"
    assert default_group(Settings(topic_prefix="p", team="*")) == "p.teams-stream"
