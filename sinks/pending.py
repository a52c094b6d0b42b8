"""The batch being filled: consumed messages decoded into items, dead letters, and the offsets they span.

Pure (a record is anything with ``topic``, ``partition``, ``offset``, ``key``
and ``value``): the worker polls Kafka and hands each record here, with the
kind and team its topic says (:mod:`.routing`), then hands the whole batch to
:class:`~rankstream.sinks.writer.BatchWriter` and commits the offset ranges once
it is stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rankstream.kafka_access import claim_team
from rankstream.schema import InvalidEvent, decode_event, dlq_record, loads
from rankstream.sinks.records import validate_alert, validate_step
from rankstream.sinks.writer import Item


class DeadLetter(NamedTuple):
    """A message for a dead-letter topic: ``topic`` is the source's team's (``''``: the sink's own)."""

    key: bytes | None
    value: bytes
    topic: str = ""


@dataclass
class PendingBatch:
    """Messages consumed since the last handover to the writer."""

    items: list[Item] = field(default_factory=list)
    origins: list[Any] = field(default_factory=list)  # the consumer record of each item (for the DLQ)
    teams: list[str] = field(default_factory=list)  # the team of each item's topic ('' in the legacy mode)
    dlq: list[DeadLetter] = field(default_factory=list)
    ranges: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # (topic, partition) -> [first, last]
    rows: int = 0
    started: float = 0.0  # monotonic time of the first message
    team_corrected: int = 0  # run_start events that claimed another team than their topic's
    dlq_topics: dict[str, str] = field(default_factory=dict)  # source topic -> its dead-letter topic

    def accept(self, topic: str, record: Any, events_topic: str, steps_topic: str, team: str = "") -> None:
        """:meth:`add` with the kind told by the topic's name: ``events_topic``, ``steps_topic``, else alerts."""
        kind = "events" if topic == events_topic else "steps" if topic == steps_topic else "alerts"
        self.add(topic, record, kind, team)

    def add(self, topic: str, record: Any, kind: str, team: str = "", dlq_topic: str = "") -> None:
        """Decode one message of ``kind`` (events, steps, alerts) into an item, or queue it for the dead-letter
        topic (``dlq_topic``, '': the sink's own) with the reason.

        ``team`` (the team of the topic it came through): the team of the record, whatever
        a run_start's meta or an alert claims; '' keeps what they say (the legacy mode).
        """
        if not self.ranges:
            self.started = time.monotonic()
        key = (topic, record.partition)
        span = self.ranges.get(key)
        if span is None:
            self.ranges[key] = [record.offset, record.offset]
        else:
            span[1] = record.offset
        if dlq_topic:
            self.dlq_topics[topic] = dlq_topic
        raw = record.value
        try:
            if raw is None:
                raise InvalidEvent("empty message")
            if kind == "events":
                event = decode_event(raw)
                if team and claim_team(event, team) is not None:
                    self.team_corrected += 1
                self.items.append(("event", event))
                self.rows += 1 + len(event["metrics"])
            else:
                try:
                    obj = loads(raw)
                except (ValueError, TypeError) as exc:
                    raise InvalidEvent(f"not valid JSON: {str(exc).splitlines()[0][:120]}") from None
                if kind == "steps":
                    rec = validate_step(obj)
                    self.items.append(("step", rec))
                    self.rows += 1 + len(rec["metrics"])
                else:
                    alert = validate_alert(obj)
                    if team:
                        alert["team"] = team
                    self.items.append(("alert", alert))
                    self.rows += 1
        except InvalidEvent as exc:
            letter = dlq_record(raw or b"", exc.reason, topic, record.partition, record.offset)
            self.dlq.append(DeadLetter(record.key, letter, dlq_topic))
        else:  # one item was added
            self.origins.append(record)
            self.teams.append(team)

    def refuse(self, refused: list[tuple[int, str]]) -> None:
        """Queue the items the store refused, ``(index in items, reason)``, for the dead-letter topic."""
        for index, why in refused:
            self._dead_letter(self.origins[index], why)

    def drop(self, refused: list[tuple[int, str]]) -> None:
        """Take the items ``(index in items, reason)`` out of the batch and queue them for the dead-letter topic."""
        if not refused:
            return
        for index, why in refused:
            self._dead_letter(self.origins[index], why)
        gone = {index for index, _ in refused}
        kept = [i for i in range(len(self.items)) if i not in gone]
        self.items = [self.items[i] for i in kept]
        self.origins = [self.origins[i] for i in kept]
        self.teams = [self.teams[i] for i in kept]

    def _dead_letter(self, record: Any, why: str) -> None:
        letter = dlq_record(record.value or b"", why, record.topic, record.partition, record.offset)
        self.dlq.append(DeadLetter(record.key, letter, self.dlq_topics.get(record.topic, "")))

    def offset_ranges(self) -> dict[tuple[str, int], tuple[int, int]]:
        """``(topic, partition) -> (first, last)`` offsets of every message in the batch."""
        return {k: (v[0], v[1]) for k, v in self.ranges.items()}
