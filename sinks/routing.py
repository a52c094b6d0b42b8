"""Which topics the sink reads, and what each one says about its records: their kind, their team, their DLQ.

Three modes, from ``RANKSTREAM_TEAM`` (:class:`~rankstream.config.Settings`):

* legacy (no team): the prefix's own ``<prefix>.events|steps|alerts``; a run's team is
  what its run_start's ``meta`` claims;
* one team (``--team a`` with ``--prefix <prefix>.a``): those topics, every record team ``a``;
* every team (``--team '*'``): every topic matching ``<prefix>.<team>.events|steps|alerts``
  (:func:`~rankstream.kafka_access.team_topic_pattern`); each record's team is the one of its
  topic (:func:`~rankstream.kafka_access.team_of_topic`) and its dead letters go to that team's
  ``<prefix>.<team>.dlq``. The matching topics are looked up again every
  ``--topic-refresh-seconds`` (:class:`~rankstream.sinks.worker_rebalance.TeamTopicWatch`), so
  a new team's topics are read without a restart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rankstream.config import Settings
from rankstream.kafka_access import team_of_topic, team_topic_pattern, team_topics, topics_matching

#: The topic kinds the sink consumes.
SINK_KINDS = ("events", "steps", "alerts")


@dataclass(frozen=True, slots=True)
class TopicRoute:
    """What a consumed topic says about its records."""

    kind: str  # events, steps or alerts
    team: str  # '' in the legacy mode
    dlq: str  # the dead-letter topic of its records


class Router:
    """The sink's topics (a shared sink: those matching ``pattern`` found so far) and each one's :class:`TopicRoute`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        topics = settings.topics
        self.pattern = team_topic_pattern(settings.topic_prefix, SINK_KINDS) if settings.all_teams else None
        self.topics: tuple[str, ...] = () if self.pattern else (topics.events, topics.steps, topics.alerts)
        self._routes: dict[str, TopicRoute] = {}

    def describe(self) -> str:
        """The subscription, for the log."""
        if self.pattern:
            return f"every team's topics {self.settings.topic_prefix}.<team>.{{{','.join(SINK_KINDS)}}}"
        return ", ".join(self.topics)

    def matching(self, topics: Iterable[str]) -> tuple[str, ...]:
        """Those of ``topics`` a shared sink reads (sorted)."""
        if not self.pattern:
            return ()
        return topics_matching(self.pattern, topics)

    def route(self, topic: str) -> TopicRoute:
        route = self._routes.get(topic)
        if route is None:
            route = self._routes[topic] = self._route(topic)
        return route

    def _route(self, topic: str) -> TopicRoute:
        settings = self.settings
        if self.pattern:
            found = team_of_topic(settings.topic_prefix, topic)
            if found is not None:
                team, kind = found
                return TopicRoute(kind, team, team_topics(settings.topic_prefix, team).dlq)
        topics = settings.topics
        kind = "events" if topic == topics.events else "steps" if topic == topics.steps else "alerts"
        return TopicRoute(kind, settings.fixed_team, topics.dlq)


__all__ = ["SINK_KINDS", "Router", "TopicRoute"]
