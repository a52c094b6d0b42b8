"""Which topics the sink reads, and what each one says about its records: their kind, their team, their DLQ.

Three modes, from ``RANKSTREAM_TEAM`` (:class:`~rankstream.config.Settings`):

* legacy (no team): the prefix's own ``<prefix>.events|steps|alerts``; a run's team is
  what its run_start's ``meta`` claims;
* one team (``--team a`` with ``--prefix <prefix>.a``): those topics, every record team ``a``;
* every team (``--team '*'``): one regular-expression subscription to every
  ``<prefix>.<team>.events|steps|alerts``; each record's team is the one of its topic
  (:func:`~rankstream.kafka_access.team_of_topic`) and its dead letters go to that team's
  ``<prefix>.<team>.dlq``. New team topics match the pattern once the consumer's metadata
  is refreshed (``metadata_max_age_ms``, the CLI's ``--topic-refresh-seconds``).
"""

from __future__ import annotations

from dataclasses import dataclass

from rankstream.config import Settings
from rankstream.kafka_access import team_of_topic, team_topic_pattern, team_topics

#: The topic kinds the sink consumes.
SINK_KINDS = ("events", "steps", "alerts")


@dataclass(frozen=True, slots=True)
class TopicRoute:
    """What a consumed topic says about its records."""

    kind: str  # events, steps or alerts
    team: str  # '' in the legacy mode
    dlq: str  # the dead-letter topic of its records


class Router:
    """The sink's subscription (topics or a pattern) and each consumed topic's :class:`TopicRoute` (cached)."""

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
