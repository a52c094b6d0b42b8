"""The batch being filled: consumed messages decoded into items, dead letters, and the offsets they span.

Pure (a record is anything with ``topic``, ``partition``, ``offset``, ``key``
and ``value``): the worker polls Kafka and hands each record here, then hands
the whole batch to :class:`~rankstream.sinks.writer.BatchWriter` and commits
the offset ranges once it is stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rankstream.kafka_access import claim_team
from rankstream.schema import InvalidEvent, decode_event, dlq_record, loads
from rankstream.sinks.records import validate_alert, validate_step
from rankstream.sinks.writer import Item

#: A message for the dead-letter topic: ``(key, dead letter)``.
DeadLetter = tuple[bytes | None, bytes]


@dataclass
class PendingBatch:
    """Messages consumed since the last handover to the writer."""

    items: list[Item] = field(default_factory=list)
    origins: list[Any] = field(default_factory=list)  # the consumer record of each item (for the DLQ)
    dlq: list[DeadLetter] = field(default_factory=list)
    ranges: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # (topic, partition) -> [first, last]
    rows: int = 0
    started: float = 0.0  # monotonic time of the first message
    team_corrected: int = 0  # run_start events that claimed another team than RANKSTREAM_TEAM

    def accept(self, topic: str, record: Any, events_topic: str, steps_topic: str, team: str = "") -> None:
        """Decode one message into an item, or queue it for the dead-letter topic with the reason.

        ``team`` (RANKSTREAM_TEAM): the team of every run, whatever its run_start claims.
        """
        if not self.ranges:
            self.started = time.monotonic()
        key = (topic, record.partition)
        span = self.ranges.get(key)
        if span is None:
            self.ranges[key] = [record.offset, record.offset]
        else:
            span[1] = record.offset
        raw = record.value
        try:
            if raw is None:
                raise InvalidEvent("empty message")
            if topic == events_topic:
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
                if topic == steps_topic:
                    rec = validate_step(obj)
                    self.items.append(("step", rec))
                    self.rows += 1 + len(rec["metrics"])
                else:
                    self.items.append(("alert", validate_alert(obj)))
                    self.rows += 1
        except InvalidEvent as exc:
            self.dlq.append((record.key, dlq_record(raw or b"", exc.reason, topic, record.partition, record.offset)))
        else:  # one item was added
            self.origins.append(record)

    def refuse(self, refused: list[tuple[int, str]]) -> None:
        """Queue the items the store refused, ``(index in items, reason)``, for the dead-letter topic."""
        for index, why in refused:
            record = self.origins[index]
            self.dlq.append(
                (record.key, dlq_record(record.value or b"", why, record.topic, record.partition, record.offset))
            )

    def offset_ranges(self) -> dict[tuple[str, int], tuple[int, int]]:
        """``(topic, partition) -> (first, last)`` offsets of every message in the batch."""
        return {k: (v[0], v[1]) for k, v in self.ranges.items()}
