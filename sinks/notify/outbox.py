"""What is waiting to be delivered, and which Kafka offsets that holds back (pure: the clock is an argument).

* :class:`Outbox` gathers alerts into deliveries: AlertManager receivers get
  every alert of a poll at once (AlertManager groups by itself); chat receivers
  get one message per run per ``group_wait_s`` window. A failed delivery is
  retried with doubling backoff, and after ``retry.attempts`` it is given up
  (the caller dead-letters its alerts).
* :class:`Seen` deduplicates by ``(receiver, team, alert_id, state)``: what is
  delivered (bounded LRU) or on its way is not queued again.
* :class:`Offsets` commits a partition only up to its oldest message not yet
  delivered or dead-lettered: the log stays the source of truth.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from rankstream.sinks.notify.alerts import NotifyAlert
from rankstream.sinks.notify.config import NotifyConfig, Receiver, Retry

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Source:
    """Where an alert came from: what its dead letter and its offset commit need."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    #: Kafka record timestamp (ms): when the worker published the alert.
    published_ms: int = -1

    @property
    def tp(self) -> TopicPartition:
        return (self.topic, self.partition)


@dataclass
class Delivery:
    """One request to one receiver: the alerts it carries, when it is due, how often it failed."""

    receiver: Receiver
    run_id: str
    due_at: float
    items: list[tuple[NotifyAlert, Source]] = field(default_factory=list)
    failures: int = 0
    last_error: str = ""
    #: The run's topic team (chat groups are per team and run: two teams may use one run_id); "" for AlertManager.
    team: str = ""

    def group_key(self) -> tuple[str, str, str]:
        return (self.receiver.name, self.team, self.run_id)

    @property
    def alerts(self) -> list[NotifyAlert]:
        return [alert for alert, _ in self.items]


class Seen:
    """Bounded memory of what was delivered, plus what is queued now."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._done: OrderedDict[tuple[str, str, str, str], None] = OrderedDict()
        self._queued: set[tuple[str, str, str, str]] = set()

    def fresh(self, receiver: str, alert: NotifyAlert) -> bool:
        key = (receiver, *alert.key())
        return key not in self._done and key not in self._queued

    def queued(self, receiver: str, alert: NotifyAlert) -> None:
        self._queued.add((receiver, *alert.key()))

    def done(self, receiver: str, alert: NotifyAlert) -> None:
        key = (receiver, *alert.key())
        self._queued.discard(key)
        self._done[key] = None
        self._done.move_to_end(key)
        while len(self._done) > self.size:
            self._done.popitem(last=False)

    def forget(self, receiver: str, alert: NotifyAlert) -> None:
        """An alert left to be read again (not delivered) must not count as seen."""
        self._queued.discard((receiver, *alert.key()))

    def forget_queued(self) -> None:
        """After a rebalance: what was queued is re-read from Kafka, so it must not count as seen."""
        self._queued.clear()


class Outbox:
    def __init__(self, config: NotifyConfig) -> None:
        self.group_wait_s = config.group_wait_s
        self.retry: Retry = config.retry
        self._open: dict[tuple[str, str, str], Delivery] = {}  # (receiver, team, run_id or "") -> gathering
        self._waiting: list[Delivery] = []  # closed, due at due_at (first try or a retry)

    def add(self, alert: NotifyAlert, source: Source, receiver: Receiver, now: float) -> None:
        """Queue ``alert`` for ``receiver``: into its (team's) run's open group, or a new one."""
        grouped = receiver.grouped
        team, run_id = (alert.source_team, alert.run_id) if grouped else ("", "")
        key = (receiver.name, team, run_id)
        delivery = self._open.get(key)
        if delivery is None:
            # Behind a delivery being retried: keeps the order (a resolve never overtakes its firing).
            delivery = next((d for d in self._waiting if d.group_key() == key), None)
        if delivery is None:
            due = now + self.group_wait_s if grouped else now
            delivery = self._open[key] = Delivery(receiver, run_id, due, team=team)
        delivery.items.append((alert, source))

    def due(self, now: float) -> list[Delivery]:
        """Deliveries to attempt now; a group leaves the open set once due (later alerts start a new one)."""
        out = [d for d in self._waiting if d.due_at <= now]
        self._waiting = [d for d in self._waiting if d.due_at > now]
        for key in [k for k, d in self._open.items() if d.due_at <= now]:
            out.append(self._open.pop(key))
        return out

    def failed(self, delivery: Delivery, error: str, now: float, *, retry: bool = True) -> bool:
        """Record a failed attempt; True when the delivery is given up (dead-letter it): after
        ``retry.attempts`` failures, or at once without ``retry``. Otherwise it is rescheduled."""
        delivery.failures += 1
        delivery.last_error = error
        if not retry or delivery.failures >= self.retry.attempts:
            return True
        delivery.due_at = now + self.retry.delay(delivery.failures)
        self._waiting.append(delivery)
        return False

    def next_due(self) -> float | None:
        times = [d.due_at for d in self._waiting] + [d.due_at for d in self._open.values()]
        return min(times) if times else None

    def everything(self) -> list[Delivery]:
        """Take every queued delivery, due or not (shutdown and rebalance flush them once)."""
        out = self._waiting + list(self._open.values())
        self._waiting, self._open = [], {}
        return out

    def __len__(self) -> int:
        return len(self._waiting) + len(self._open)


class Offsets:
    """Per partition: offsets still held by a delivery, and how far it is safe to commit."""

    def __init__(self) -> None:
        self._held: dict[TopicPartition, dict[int, int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def consumed(self, tp: TopicPartition, offset: int, holds: int) -> None:
        """A message was read; ``holds`` deliveries must finish before its offset may be committed."""
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)
        if holds > 0:
            held = self._held.setdefault(tp, {})
            held[offset] = held.get(offset, 0) + holds

    def release(self, tp: TopicPartition, offset: int) -> None:
        held = self._held.get(tp)
        if held is None or offset not in held:
            return
        held[offset] -= 1
        if held[offset] <= 0:
            del held[offset]

    def to_commit(self) -> dict[TopicPartition, int]:
        """Offsets to commit now (only those that moved): the oldest held offset, or past the last read."""
        out: dict[TopicPartition, int] = {}
        for tp, nxt in self._next.items():
            held = self._held.get(tp)
            position = min(held) if held else nxt
            if position > self._committed.get(tp, -1):
                out[tp] = position
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def held(self) -> int:
        return sum(len(h) for h in self._held.values())

    def reset(self) -> None:
        """After a rebalance every position restarts from the committed offsets."""
        self._held.clear()
        self._next.clear()
        self._committed.clear()
