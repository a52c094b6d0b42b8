"""The sink's offset bookkeeping on its consumer: is a batch caught up, and committing a stored batch's ranges."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rankstream.errors import one_line

log = logging.getLogger("rankstream.sink")

#: ``(topic, partition) -> (first, last)`` offsets of a batch.
Ranges = Mapping[tuple[str, int], tuple[int, int]] | Mapping[tuple[str, int], list[int]]


def caught_up(consumer: Any, ranges: Ranges) -> bool:
    """True when the batch ends at the last known high watermark of every partition it holds."""
    from kafka.errors import IllegalStateError
    from kafka.structs import TopicPartition

    for (topic, part), (_, last) in ranges.items():
        try:
            highwater = consumer.highwater(TopicPartition(topic, part))
        except IllegalStateError:  # no longer assigned
            return False
        if highwater is None or last + 1 < highwater:
            return False
    return True


def commit(consumer: Any, ranges: Ranges, committed: dict[str, int]) -> None:
    """Commit the offsets after ``ranges``; record them in ``committed`` (``topic/partition -> next offset``)."""
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata, TopicPartition

    offsets = {TopicPartition(t, p): OffsetAndMetadata(last + 1, "", -1) for (t, p), (_, last) in ranges.items()}
    try:
        consumer.commit(offsets)
    except KafkaError as exc:
        # The rows are stored; a failed commit only means they are read again and collapse as duplicates.
        log.warning("sink: offset commit failed (%s); the batch will be re-read and deduplicated", one_line(exc))
        return
    for (topic, part), (_, last) in ranges.items():
        committed[f"{topic}/{part}"] = last + 1


__all__ = ["caught_up", "commit"]
