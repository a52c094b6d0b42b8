"""Grouping, retries, dedup and committable offsets (pure, clock as an argument)."""

from __future__ import annotations

from rankstream.sinks.notify.config import parse_config
from rankstream.sinks.notify.outbox import Offsets, Outbox, Seen, Source
from tests.unit.sinks.notify.conftest import make_alert

CONFIG = parse_config(
    {
        "group_wait_s": 10,
        "retry": {"attempts": 3, "backoff_s": 1, "max_backoff_s": 3},
        "receivers": {
            "am": {"kind": "alertmanager", "url": "http://am"},
            "slack": {"kind": "slack", "url": "http://slack"},
        },
    },
    env={},
)
AM, SLACK = CONFIG.receivers["am"], CONFIG.receivers["slack"]


def src(offset: int, partition: int = 0) -> Source:
    return Source("p.alerts", partition, offset, b"k", b"{}")


def test_chat_groups_one_message_per_run_per_window_and_alertmanager_goes_at_once() -> None:
    box = Outbox(CONFIG)
    for i, run in enumerate(["a", "a", "b", "a"]):
        alert = make_alert(run_id=run, step=i)
        box.add(alert, src(i), SLACK, now=100.0 + i)
        box.add(alert, src(i), AM, now=100.0 + i)
    first = box.due(103.0)
    assert [(d.receiver.name, len(d.items)) for d in first] == [("am", 4)]
    assert box.due(109.9) == []
    groups = box.due(110.0)
    assert [(d.receiver.name, d.run_id, [s.offset for _, s in d.items]) for d in groups] == [("slack", "a", [0, 1, 3])]
    later = box.due(112.0)
    assert [(d.run_id, len(d.items)) for d in later] == [("b", 1)]
    box.add(make_alert(run_id="a", step=9), src(9), SLACK, now=113.0)  # a new window after the first was sent
    assert box.due(122.9) == [] and len(box.due(123.0)) == 1


def test_retries_double_then_give_up() -> None:
    box = Outbox(CONFIG)
    box.add(make_alert(), src(0), AM, now=0.0)
    (delivery,) = box.due(0.0)
    assert box.failed(delivery, "down", now=0.0) is False
    assert box.next_due() == 1.0
    assert box.due(0.9) == []
    (again,) = box.due(1.0)
    assert box.failed(again, "down", now=1.0) is False
    assert box.next_due() == 3.0  # 1 s, then 2 s
    (third,) = box.due(3.0)
    assert box.failed(third, "down", now=3.0) is True  # the third failure gives up
    assert len(box) == 0 and third.last_error == "down"


def test_permanent_failure_gives_up_at_once() -> None:
    box = Outbox(CONFIG)
    box.add(make_alert(), src(0), AM, now=0.0)
    (delivery,) = box.due(0.0)
    assert box.failed(delivery, "HTTP 400", now=0.0, retry=False) is True
    assert len(box) == 0


def test_seen_dedups_per_receiver_and_state() -> None:
    seen = Seen(size=2)
    alert = make_alert()
    assert seen.fresh("am", alert)
    seen.queued("am", alert)
    assert not seen.fresh("am", alert) and seen.fresh("slack", alert)
    assert seen.fresh("am", make_alert(state="resolved"))
    seen.forget("am", alert)
    assert seen.fresh("am", alert)
    seen.done("am", alert)
    assert not seen.fresh("am", alert)
    seen.done("am", make_alert(step=1))
    seen.done("am", make_alert(step=2))  # the LRU holds two: the first is forgotten
    assert seen.fresh("am", alert)


def test_offsets_commit_only_past_delivered_messages() -> None:
    offsets = Offsets()
    tp = ("p.alerts", 0)
    offsets.consumed(tp, 10, holds=2)  # two receivers
    offsets.consumed(tp, 11, holds=0)  # routed nowhere / invalid and dead-lettered
    offsets.consumed(tp, 12, holds=1)
    assert offsets.to_commit() == {tp: 10}
    offsets.committed({tp: 10})
    assert offsets.to_commit() == {}
    offsets.release(tp, 12)
    offsets.release(tp, 10)
    assert offsets.to_commit() == {}  # offset 10 still waits for its second receiver
    offsets.release(tp, 10)
    assert offsets.to_commit() == {tp: 13}
    offsets.reset()
    assert offsets.to_commit() == {}


def test_alerts_queue_behind_a_delivery_being_retried() -> None:
    box = Outbox(CONFIG)
    box.add(make_alert(), src(0), AM, now=0.0)
    (delivery,) = box.due(0.0)
    assert box.failed(delivery, "down", now=0.0) is False
    box.add(make_alert(state="resolved"), src(1), AM, now=0.5)  # must not reach AlertManager before its firing
    assert box.due(0.5) == []
    (retry,) = box.due(1.0)
    assert [(a.state, s.offset) for a, s in retry.items] == [("firing", 0), ("resolved", 1)]
