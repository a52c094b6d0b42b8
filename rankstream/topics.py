"""Kafka topic names of the wire contract, derived from one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "rankstream"

#: Kafka header of an event re-sent from the dead-letter topic for the sink alone (``rankstream dlq
#: --redrive``): the store had refused it, the stream worker had already aligned it, so the worker skips it.
SINK_ONLY_HEADER = "rankstream-sink-only"


@dataclass(frozen=True, slots=True)
class Topics:
    """The four contract topics for a prefix (``<prefix>.events`` ...)."""

    prefix: str = DEFAULT_PREFIX

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def steps(self) -> str:
        return f"{self.prefix}.steps"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}.alerts"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    def all(self) -> tuple[str, str, str, str]:
        return (self.events, self.steps, self.alerts, self.dlq)
