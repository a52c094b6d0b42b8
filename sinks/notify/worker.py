"""The notifier's consumer loop: alerts topic(s) -> routes -> deliveries -> offset commits.

Guarantees (docs/notify.md):

* an offset is committed only once every alert up to it was delivered to each of
  its receivers, or dead-lettered to the dlq beside its topic with the reason (invalid
  records at once; deliveries after ``retry.attempts`` failures, or at once when
  the receiver refuses the payload or its credentials);
* with a team (``--team T`` or ``*``) an alert's team is its topic's (:mod:`.teams`), whatever
  the record says (a mismatch is corrected and counted);
* the same ``(receiver, team, alert_id, state)`` is sent once per process (bounded LRU);
  a restart re-reads what was not committed and may send that again;
* chat receivers get one message per run per ``group_wait_s``; AlertManager gets
  each poll's alerts at once and groups them itself.

Deliveries run on the consumer thread, one at a time; a receiver that hangs
costs at most its ``timeout_s`` per attempt, and retries wait without blocking
the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from rankstream.config import Settings
from rankstream.errors import one_line
from rankstream.schema import dlq_record, loads
from rankstream.sinks.notify.alerts import NotifyAlert, RunNames, parse_alert
from rankstream.sinks.notify.config import NotifyConfig
from rankstream.sinks.notify.outbox import Delivery, Offsets, Outbox, Seen, Source, TopicPartition
from rankstream.sinks.notify.sender import DeliveryFailed, Sender
from rankstream.sinks.notify.teams import AlertSubscription
from rankstream.sinks.records import InvalidRecord

log = logging.getLogger("rankstream.notify")

POLL_MS = 100


class Delivered(NamedTuple):
    receiver: str
    alert_id: str
    state: str
    step: int
    published_s: float  # the alert message's Kafka timestamp
    delivered_s: float  # when the receiver answered 2xx


@dataclass
class NotifyStats:
    """Counters a caller (tests, the benchmark, the CLI) reads while the notifier runs."""

    messages: int = 0
    #: alert messages per team of the topic they came through (with ``--team``)
    teams: Counter[str] = field(default_factory=Counter)
    #: alerts whose own ``team`` field named another team than their topic's (the topic's was used)
    team_corrected: int = 0
    invalid: int = 0
    duplicates: int = 0
    unrouted: int = 0
    delivered: Counter[str] = field(default_factory=Counter)  # receiver -> alerts delivered
    requests: int = 0
    failures: int = 0
    dlq: int = 0
    committed: dict[str, int] = field(default_factory=dict)
    #: with ``record_deliveries``: one per alert delivered (the notify benchmark's latencies)
    deliveries: list[Delivered] = field(default_factory=list)


class Notifier:
    """Consume alerts and notify; ``run()`` blocks until ``stop`` is set, then flushes once and commits."""

    def __init__(
        self,
        settings: Settings,
        config: NotifyConfig,
        *,
        group_id: str | None = None,
        sender: Sender | None = None,
        record_deliveries: bool = False,
        topic_refresh_s: float | None = None,
    ) -> None:
        from rankstream.sinks.notify.consumer import TOPIC_REFRESH_S

        self.settings = settings
        self.config = config
        self.subscription = AlertSubscription.of(settings)
        self.group_id = group_id or self.subscription.default_group
        #: The topics subscribed: the legacy or one-team topic; a shared notifier's team topics found so far.
        self.topics: tuple[str, ...] = self.subscription.topics
        #: How often a shared notifier looks for new team alerts topics.
        self.topic_refresh_s = topic_refresh_s or TOPIC_REFRESH_S
        self.stats = NotifyStats()
        self.ready = threading.Event()
        self.record_deliveries = record_deliveries
        self._sender = sender or Sender(config)
        self._outbox = Outbox(config)
        self._seen = Seen(config.dedup_size)
        self._names = RunNames()
        self._offsets = Offsets()
        self._consumer: Any = None
        self._producer: Any = None
        #: Partitions (re)assigned by a rebalance, to be read again from their committed offsets.
        self._to_rewind: set[Any] = set()

    # ------------------------------------------------------------------ lifecycle

    def run(self, stop: threading.Event) -> None:
        from rankstream.sinks.notify.consumer import TeamTopicWatch, make_consumer, rejoin_watch

        try:
            self._consumer = make_consumer(self)
            rejoin = rejoin_watch(self._consumer, self)
            team_topics = TeamTopicWatch(self, self.topic_refresh_s) if self.subscription.every_team else None
            self.ready.set()
            log.info(
                "notify: consuming %s (group %s) for %d receiver(s): %s",
                self.subscription.describe(),
                self.group_id,
                len(self.config.receivers),
                ", ".join(f"{r.name} ({r.kind})" for r in self.config.receivers.values()),
            )
            while not stop.is_set():
                if team_topics is not None:
                    team_topics.check(self._consumer)
                self.step()
                rejoin.check(self._consumer)
            self.flush_all()
            log.info(
                "notify: stopped after %d alert message(s): %s delivered, %d duplicate(s), %d dead-lettered",
                self.stats.messages,
                dict(self.stats.delivered) or "none",
                self.stats.duplicates,
                self.stats.dlq,
            )
        finally:
            self.close()

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close(autocommit=False)
            except Exception as exc:
                log.warning("notify: closing the consumer failed: %s", one_line(exc))
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=5)
            except Exception as exc:
                log.warning("notify: closing the DLQ producer failed: %s", one_line(exc))
        self._sender.close()
        self.ready.clear()

    # ------------------------------------------------------------------ loop

    def step(self) -> None:
        """One round: poll (no longer than the next due delivery), queue, deliver what is due, commit."""
        now = time.time()
        nxt = self._outbox.next_due()
        timeout_ms = POLL_MS if nxt is None else int(max(0.0, min(POLL_MS / 1000, nxt - now)) * 1000)
        if not self.topics:  # a shared notifier before any team has an alerts topic
            time.sleep(POLL_MS / 1000)
            return
        records = self._consumer.poll(timeout_ms=timeout_ms)
        if self._to_rewind:  # a rebalance happened in that poll: its records may start past what is committed
            self._rewind()
            records = {}
        now = time.time()
        for batch in records.values():
            for record in batch:
                self.accept(record, now)
        for delivery in self._outbox.due(time.time()):
            self._attempt(delivery)
        self._commit()

    def accept(self, record: Any, now: float) -> None:
        """Decode, deduplicate and route one alert message (an invalid one is dead-lettered at once)."""
        self.stats.messages += 1
        source = Source(
            record.topic, record.partition, record.offset, record.key, record.value or b"", record.timestamp or -1
        )
        team = self.subscription.team_of(source.topic)
        if team:
            self.stats.teams[team] += 1
        try:
            alert = parse_alert(loads(source.raw))
        except (InvalidRecord, ValueError, TypeError) as exc:
            reason = exc.reason if isinstance(exc, InvalidRecord) else f"not valid JSON: {one_line(exc)}"
            self.stats.invalid += 1
            self._offsets.consumed(source.tp, source.offset, 0)
            self._dead_letter([source], f"notify: invalid alert: {reason}")
            return
        if team:  # the topic says whose alert this is, whatever the record claims
            if alert.team != team:
                self.stats.team_corrected += 1
            alert = replace(alert, team=team, source_team=team)
        alert = self._names.fill(alert)
        receivers = self.config.receivers_for(alert_fields(alert))
        if not receivers:
            self.stats.unrouted += 1
        fresh = [r for r in receivers if self._seen.fresh(r.name, alert)]
        if receivers and not fresh:
            self.stats.duplicates += 1
        self._offsets.consumed(source.tp, source.offset, len(fresh))
        for receiver in fresh:
            self._seen.queued(receiver.name, alert)
            self._outbox.add(alert, source, receiver, now)

    def flush_all(self, *, in_rebalance: bool = False) -> None:
        """Attempt everything queued once, now (shutdown, rebalance); what fails stays uncommitted, to be read
        again. ``in_rebalance``: called from the rebalance listener, where the commit cannot block (_commit)."""
        for delivery in self._outbox.everything():
            self._attempt(delivery, last_chance=True)
        self._commit(in_rebalance=in_rebalance)

    def rewind_after_poll(self, assigned: Any) -> None:
        """A rebalance assigned ``assigned``: read them again from their committed offsets once the poll returns.

        kafka-python 3 keeps the position of a partition that stays assigned across a rebalance, so
        alerts left undelivered (uncommitted) at the revocation would otherwise be skipped. The
        committed offsets cannot be fetched inside the rebalance callback: :meth:`step` does it."""
        self._to_rewind.update(assigned)

    def _rewind(self) -> None:
        from rankstream.sinks.rejoin import rewind_to_committed

        asked, self._to_rewind = self._to_rewind, set()
        rewind_to_committed(self._consumer, asked)

    def forget_uncommitted(self) -> None:
        """After partitions were revoked: queues start empty; what they held is read again (rewind_after_poll)."""
        for delivery in self._outbox.everything():
            for alert, _ in delivery.items:
                self._seen.forget(delivery.receiver.name, alert)
        self._offsets.reset()

    # ------------------------------------------------------------------ delivery

    def _attempt(self, delivery: Delivery, *, last_chance: bool = False) -> None:
        """Send one delivery; on failure retry it later, dead-letter it, or (``last_chance``) leave it in Kafka."""
        receiver = delivery.receiver
        self.stats.requests += 1
        try:
            self._sender.send(delivery)
        except DeliveryFailed as exc:
            self.stats.failures += 1
            reason = str(exc)
            if self._outbox.failed(delivery, reason, time.time(), retry=not (exc.permanent or last_chance)):
                if exc.permanent or delivery.failures >= self.config.retry.attempts:
                    self._give_up(delivery, reason)
                else:
                    self._leave(delivery, reason)
            else:
                log.warning(
                    "notify: %s; retry %d of %d in %.1fs",
                    reason,
                    delivery.failures,
                    self.config.retry.attempts - 1,
                    max(0.0, delivery.due_at - time.time()),
                )
            return
        delivered_at = time.time()
        for alert, source in delivery.items:
            self._seen.done(receiver.name, alert)
            self._offsets.release(source.tp, source.offset)
            if self.record_deliveries:
                self.stats.deliveries.append(
                    Delivered(
                        receiver.name, alert.alert_id, alert.state, alert.step, source.published_ms / 1000, delivered_at
                    )
                )
        self.stats.delivered[receiver.name] += len(delivery.items)

    def _give_up(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter every alert of a delivery that keeps failing, with the reason; then release them."""
        sources = [source for _, source in delivery.items]
        self._dead_letter(sources, f"notify: gave up after {delivery.failures} attempt(s): {reason}")
        for alert, source in delivery.items:
            self._seen.done(delivery.receiver.name, alert)
            self._offsets.release(source.tp, source.offset)

    def _leave(self, delivery: Delivery, reason: str) -> None:
        """Leave a delivery to be read again (stopping): its offsets stay uncommitted."""
        for alert, _ in delivery.items:
            self._seen.forget(delivery.receiver.name, alert)
        log.warning(
            "notify: %d alert(s) for %s not delivered before stopping (%s); they will be read again",
            len(delivery.items),
            delivery.receiver.name,
            reason,
        )

    def _dead_letter(self, sources: list[Source], reason: str) -> None:
        """Send dead letters, each to the dlq beside its topic, and wait for them (a letter must be safe
        before its offset is committed)."""
        if self._producer is None:
            from kafka import KafkaProducer

            self._producer = KafkaProducer(acks="all", linger_ms=5, **self.settings.kafka_python_kwargs())
        by_dlq: defaultdict[str, list[Source]] = defaultdict(list)
        for source in sources:
            by_dlq[self.subscription.dlq_of(source.topic)].append(source)
        futures = [
            self._producer.send(topic, key=s.key, value=dlq_record(s.raw, reason, s.topic, s.partition, s.offset))
            for topic, letters in by_dlq.items()
            for s in letters
        ]
        self._producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)
        self.stats.dlq += len(sources)
        for topic, letters in by_dlq.items():
            log.warning("notify: %d alert message(s) sent to %s: %s", len(letters), topic, reason)

    def _commit(self, *, in_rebalance: bool = False) -> None:
        """Commit what is safe. kafka-python 3 runs a rebalance listener on its network thread, where a
        blocking ``commit`` raises (and the error would end the poll): there the commit is sent
        asynchronously, ahead of the group's JoinGroup; should it fail, the new owner sends those alerts again."""
        offsets = self._offsets.to_commit()
        if not offsets:
            return
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata
        from kafka.structs import TopicPartition as KafkaTP

        request = {KafkaTP(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        if in_rebalance:
            self._consumer.commit_async(request, callback=lambda _offsets, answer: self._committed(offsets, answer))
            return
        try:
            self._consumer.commit(request)
        except KafkaError as exc:
            log.warning("notify: offset commit failed (%s); delivered alerts may be sent again", one_line(exc))
            return
        self._committed(offsets, None)

    def _committed(self, offsets: dict[TopicPartition, int], answer: Any) -> None:
        if isinstance(answer, Exception):
            log.warning("notify: offset commit before a rebalance failed (%s); alerts may be sent again", answer)
            return
        self._offsets.committed(offsets)
        for (topic, part), offset in offsets.items():
            self.stats.committed[f"{topic}/{part}"] = offset


def alert_fields(alert: NotifyAlert) -> dict[str, str]:
    """What routes match on."""
    return {"team": alert.team, "severity": alert.severity, "rule": alert.rule, "run_id": alert.run_id}


__all__ = ["Notifier", "NotifyStats", "TopicPartition"]
