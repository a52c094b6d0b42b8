"""The notifier's loop with a scripted consumer, a recording DLQ producer and httpx's mock transport.

Checks what cannot be seen from outside cheaply: commits wait for delivery,
retries then the DLQ with the reason, dedup, and that no secret reaches a log line.
"""

from __future__ import annotations

import logging
from collections import namedtuple
from typing import Any

import httpx
import pytest

from rankstream.config import Settings
from rankstream.schema import dumps, loads
from rankstream.sinks.notify.config import parse_config
from rankstream.sinks.notify.sender import Sender
from rankstream.sinks.notify.worker import Notifier
from tests.unit.sinks.notify.conftest import alert_record

Record = namedtuple("Record", "topic partition offset key value timestamp")
TOPIC = "t.alerts"
SECRET_TOKEN = "tok-very-secret-123"
SIGNING_SECRET = "SECsigning-secret-456"


class FakeConsumer:
    def __init__(self, records: list[Record]) -> None:
        self.pending = list(records)
        self.commits: list[dict[tuple[str, int], int]] = []

    def poll(self, timeout_ms: int) -> dict[Any, list[Record]]:
        batch, self.pending = self.pending, []
        return {(TOPIC, 0): batch} if batch else {}

    def commit(self, offsets: dict[Any, Any]) -> None:
        self.commits.append({(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()})

    def close(self, autocommit: bool = False) -> None:
        pass


class FakeFuture:
    def get(self, timeout: float) -> None:
        return None


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, topic: str, key: bytes | None, value: bytes) -> FakeFuture:
        self.sent.append({"topic": topic, "key": key, **loads(value)})
        return FakeFuture()

    def flush(self, timeout: float) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


def records(*alerts: dict[str, Any] | bytes) -> list[Record]:
    return [
        Record(TOPIC, 0, i, b"run", a if isinstance(a, bytes) else dumps(a), 1_700_000_000_000)
        for i, a in enumerate(alerts)
    ]


def notifier(config: dict[str, Any], handler: Any, recs: list[Record]) -> tuple[Notifier, FakeConsumer, FakeProducer]:
    cfg = parse_config(config, env={"TOKEN": SECRET_TOKEN, "SIGN": SIGNING_SECRET})
    client = httpx.Client(transport=httpx.MockTransport(handler))
    n = Notifier(Settings(topic_prefix="t"), cfg, sender=Sender(cfg, client))
    consumer, producer = FakeConsumer(recs), FakeProducer()
    n._consumer, n._producer = consumer, producer
    return n, consumer, producer


AM_CONFIG = {
    "retry": {"attempts": 3, "backoff_s": 0.0, "max_backoff_s": 0.0},
    "receivers": {"am": {"kind": "alertmanager", "url": "http://am.test:9093"}},
}


def test_alerts_reach_alertmanager_once_and_offsets_follow() -> None:
    posted: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v2/alerts"
        posted.extend(loads(request.content))
        return httpx.Response(200)

    first = alert_record(step=1)
    n, consumer, producer = notifier(
        AM_CONFIG, handler, records(first, first, alert_record(step=2), alert_record(step=1, state="resolved"))
    )
    n.step()
    assert [p["labels"]["alert_id"] for p in posted] == [
        first["alert_id"],
        alert_record(step=2)["alert_id"],
        first["alert_id"],
    ]
    assert posted[2]["endsAt"] < posted[0]["endsAt"]  # resolved: ends now; firing: ends 15 min ahead
    assert n.stats.duplicates == 1 and n.stats.delivered["am"] == 3
    assert consumer.commits == [{(TOPIC, 0): 4}]
    assert producer.sent == []


def test_failing_receiver_is_retried_then_dead_lettered_with_the_reason_and_no_secret_in_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        if request.url.host == "ding.test":
            raise httpx.ConnectError(f"cannot connect to {request.url}")  # the message quotes the URL
        return httpx.Response(503, text="down")

    config = {
        "retry": {"attempts": 3, "backoff_s": 0.0, "max_backoff_s": 0.0},
        "receivers": {
            "ding": {"kind": "dingtalk", "url": "http://ding.test/robot?access_token=${TOKEN}", "secret": "${SIGN}"},
            "slack": {"kind": "slack", "url": "http://slack.test/${TOKEN}"},
        },
        "group_wait_s": 0,
    }
    caplog.set_level(logging.DEBUG)
    n, consumer, producer = notifier(config, handler, records(alert_record()))
    for _ in range(4):
        n.step()
    assert len(calls) == 6  # three attempts per receiver
    assert all(SECRET_TOKEN in c for c in calls) and any("sign=" in c for c in calls)
    reasons = sorted(letter["reason"] for letter in producer.sent)
    assert reasons == [
        "notify: gave up after 3 attempt(s): receiver ding (dingtalk): ConnectError",
        "notify: gave up after 3 attempt(s): receiver slack (slack): HTTP 503 down",
    ]
    assert {letter["offset"] for letter in producer.sent} == {0}
    assert consumer.commits[-1] == {(TOPIC, 0): 1}  # committed only once both were dead-lettered
    text = caplog.text + repr(n.config)
    assert "gave up" in caplog.text
    assert SECRET_TOKEN not in text and SIGNING_SECRET not in text


def test_refused_payload_is_not_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(400, text="bad alert")

    n, consumer, producer = notifier(AM_CONFIG, handler, records(alert_record()))
    n.step()
    assert len(calls) == 1 and producer.sent[0]["reason"].endswith("HTTP 400 bad alert")
    assert consumer.commits == [{(TOPIC, 0): 1}]


def test_invalid_alert_goes_to_the_dlq_and_is_committed() -> None:
    n, consumer, producer = notifier(AM_CONFIG, lambda r: httpx.Response(200), records(b"{not json", {"v": 1}))
    n.step()
    assert [letter["reason"][:30] for letter in producer.sent] == [
        "notify: invalid alert: not val",
        "notify: invalid alert: missing",
    ]
    assert consumer.commits == [{(TOPIC, 0): 2}]


def test_delivery_left_at_shutdown_stays_uncommitted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    config = {**AM_CONFIG, "retry": {"attempts": 5, "backoff_s": 60}}
    n, consumer, producer = notifier(config, handler, records(alert_record()))
    n.step()
    n.flush_all()
    assert producer.sent == []
    assert all(c == {(TOPIC, 0): 0} for c in consumer.commits)  # offset 0 is read again by the next notifier


def test_a_resolve_in_the_same_batch_closes_the_alert_that_fired() -> None:
    posted: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.extend(loads(request.content))
        return httpx.Response(200)

    firing = alert_record(team="")
    resolve = {**alert_record(state="resolved"), "message": "Resolved: loss is back."}  # team known by now
    n, _, _ = notifier(AM_CONFIG, handler, records(firing, resolve))
    n.step()
    assert len(posted) == 2 and posted[0]["labels"] == posted[1]["labels"]
    assert posted[1]["labels"]["run_name"] == "llama-sft" and "team" not in posted[1]["labels"]
    assert posted[1]["startsAt"] == posted[0]["startsAt"] and posted[1]["endsAt"] < posted[0]["endsAt"]


class RebalancingConsumer(FakeConsumer):
    """kafka-python 3 keeps a partition's position across a rebalance; the notifier must seek back itself."""

    def __init__(self, records: list[Record], committed: int) -> None:
        super().__init__(records)
        self.committed_offset = committed
        self.seeks: list[tuple[Any, int]] = []

    def assignment(self) -> set[Any]:
        return {(TOPIC, 0)}

    def committed(self, tp: Any) -> int:
        return self.committed_offset

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))


def test_a_rebalance_rewinds_to_the_committed_offsets_and_drops_that_polls_records() -> None:
    delivered: list[Any] = []
    n, _, _ = notifier(AM_CONFIG, lambda r: delivered.append(r) or httpx.Response(200), [])
    consumer = RebalancingConsumer(records(alert_record(step=5)), committed=3)
    n._consumer = consumer
    n.rewind_after_poll({(TOPIC, 0)})  # what the rebalance listener does inside a poll
    n.step()
    assert consumer.seeks == [((TOPIC, 0), 3)]  # read again from what was committed, not from the kept position
    assert delivered == [] and n.stats.messages == 0  # the records of that poll are read again after the seek


class NetworkThreadConsumer(FakeConsumer):
    """kafka-python 3 calls the rebalance listener on its network thread, where a blocking commit raises."""

    def __init__(self, records: list[Record]) -> None:
        super().__init__(records)
        self.async_commits: list[dict[tuple[str, int], int]] = []
        self.callbacks: list[Any] = []
        self.in_listener = False

    def commit(self, offsets: dict[Any, Any]) -> None:
        if self.in_listener:
            raise RuntimeError("Cannot block on net.run() from the IO thread itself")
        super().commit(offsets)

    def commit_async(self, offsets: dict[Any, Any], callback: Any) -> None:
        self.async_commits.append({(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()})
        self.callbacks.append(lambda: callback(offsets, object()))  # kafka-python calls it on a later poll


def test_a_revocation_delivers_what_is_queued_and_commits_without_blocking() -> None:
    from rankstream.sinks.notify.consumer import _Rebalance

    chat = {"group_wait_s": 60, "receivers": {"hook": {"kind": "webhook", "url": "http://hooks.test/h"}}}
    delivered: list[Any] = []
    n, _, _ = notifier(chat, lambda r: delivered.append(loads(r.content)) or httpx.Response(200), [])
    consumer = NetworkThreadConsumer(records(alert_record(step=1), alert_record(step=2)))
    n._consumer = consumer
    n.step()  # both queued in the chat group window: offset 0 held
    assert delivered == [] and consumer.commits == [{(TOPIC, 0): 0}]
    consumer.in_listener = True
    _Rebalance(n).on_partitions_revoked({(TOPIC, 0)})  # must not raise into kafka-python's poll
    assert [a["step"] for body in delivered for a in body["alerts"]] == [1, 2]
    assert consumer.async_commits == [{(TOPIC, 0): 2}]
    assert n.stats.committed == {f"{TOPIC}/0": 0}
    consumer.callbacks[0]()
    assert n.stats.committed == {f"{TOPIC}/0": 2}
