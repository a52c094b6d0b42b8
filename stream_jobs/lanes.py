"""A *lane*: one events topic the worker consumes, with everything the worker keeps per topic.

Why lanes: a shared worker (``RANKSTREAM_TEAM=*``) serves every team's
``<prefix>.<team>.events``, and the team of a record is the topic it came
through, not its payload. Keeping each topic's pipeline, publisher, saved
detector states and loaded partitions apart makes that structural: partition
numbers, run_ids and state keys of two teams never meet (two teams may use the
same run_id), each team's outputs go to its own topics, and its detector state
to its own state topic ``<prefix>.<team>.stream-state`` (the one a per-team
worker uses, so switching modes keeps the state). A per-team or prefix-only
worker is the one-lane case and runs the same code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rankstream.stream_jobs.detector_state import state_topic_of
from rankstream.topics import Topics

if TYPE_CHECKING:
    from rankstream.stream_jobs.detector_state import SavedStates
    from rankstream.stream_jobs.pipeline import PartitionedPipeline
    from rankstream.stream_jobs.publisher import Publisher


@dataclass(eq=False)
class Lane:
    """One events topic: its pipeline, its publisher and the detector states of its assigned partitions."""

    #: The team of every run read here ("" when the topics name no team: the prefix-only worker).
    team: str
    #: The contract topics of the lane (input ``topics.events``, outputs ``.steps`` / ``.alerts`` / ``.dlq``).
    topics: Topics
    pipeline: PartitionedPipeline
    publisher: Publisher
    #: Saved detector state per (partition, run_id), filled on assignment and handed out per run.
    saved: SavedStates
    #: Partitions whose saved detector state has been read since they were assigned.
    loaded: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def source(self) -> str:
        """The events topic the lane consumes."""
        return self.topics.events

    @property
    def state_topic(self) -> str:
        return state_topic_of(self.topics)

    def revoke(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: their pipelines, held messages and saved states are the next owner's."""
        gone = set(partitions)
        self.pipeline.revoke(gone)
        self.loaded -= gone
        self.saved.forget(gone)


def partitions_by_lane(lanes: dict[str, Lane], tps: Iterable[tuple[str, int]]) -> dict[str, set[int]]:
    """Group ``(topic, partition)`` pairs by the lane (events topic) they belong to; other topics are left out."""
    grouped: dict[str, set[int]] = {}
    for topic, partition in tps:
        if topic in lanes:
            grouped.setdefault(topic, set()).add(partition)
    return grouped


def summed_stats(lanes: Iterable[Lane], read: Callable[[Lane], dict[str, int]]) -> dict[str, int]:
    """``read(lane)`` added up over ``lanes`` (the stats line and /metrics count the whole worker)."""
    total: dict[str, int] = {}
    for lane in lanes:
        for name, value in read(lane).items():
            total[name] = total.get(name, 0) + value
    return total


__all__ = ["Lane", "partitions_by_lane", "summed_stats"]
