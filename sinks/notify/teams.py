"""Which alerts topics a notifier reads, and whose team each alert is: the topic's, not the record's.

Three modes, from ``RANKSTREAM_TEAM`` (``--team``):

* none (legacy): ``<prefix>.alerts``; an alert's team is what the worker wrote in it;
* one team ``T``: the team's alerts topic ``<prefix>.T.alerts``; every alert is T's. A prefix that
  already ends with ``.T`` is taken as the team's own prefix (how per-team workers and sinks are
  run: ``RANKSTREAM_TOPIC_PREFIX=rankstream.T``), so the topic is then ``<prefix>.alerts``;
* every team (``*``): every topic matching ``<prefix>.<team>.alerts``
  (:func:`~rankstream.kafka_access.team_topic_pattern`), looked up again every 30 s
  (:class:`~rankstream.sinks.notify.consumer.TeamTopicWatch`) so a new team's topic joins
  without a restart; each alert's team is its topic's.

Dead letters go to the dlq topic beside the alerts topic the record came through, so a team's
broken alerts stay in the team's own ``<prefix>.<team>.dlq``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rankstream.config import ALL_TEAMS, Settings, team_prefix_of
from rankstream.kafka_access import team_of_topic, team_topic_pattern, team_topics, topics_matching
from rankstream.topics import Topics


@dataclass(frozen=True)
class AlertSubscription:
    """The notifier's topics and the team of each of them (pure: tested without a broker)."""

    prefix: str
    team: str = ""  # "" legacy, ALL_TEAMS every team, else one team

    @classmethod
    def of(cls, settings: Settings) -> AlertSubscription:
        return cls(settings.topic_prefix, settings.team)

    @property
    def every_team(self) -> bool:
        return self.team == ALL_TEAMS

    def _fixed_topics(self) -> Topics:
        """The topics of the legacy or one-team mode."""
        return Topics(team_prefix_of(self.prefix, self.team))

    @property
    def topics(self) -> tuple[str, ...]:
        """The topic of the legacy or one-team mode; every team's are found by :meth:`matching`."""
        return () if self.every_team else (self._fixed_topics().alerts,)

    def matching(self, topics: Iterable[str]) -> tuple[str, ...]:
        """Those of ``topics`` a shared notifier reads (sorted); none in the other modes."""
        if self.pattern is None:
            return ()
        return topics_matching(self.pattern, topics)

    @property
    def pattern(self) -> str | None:
        """The regex of every team's alerts topic (``*``), else None."""
        return team_topic_pattern(self.prefix, ["alerts"]) if self.every_team else None

    @property
    def default_group(self) -> str:
        """One team: a group its own principal may use (``<team prefix>.notify``). Every team: a group
        of its own, so that a legacy notifier of ``<prefix>.alerts`` (``<prefix>.notify``) is not mixed in."""
        if self.every_team:
            return f"{self.prefix}.teams-notify"
        return f"{self._fixed_topics().prefix}.notify"

    def team_of(self, topic: str) -> str:
        """The team an alert read from ``topic`` belongs to; "" in the legacy mode (the record says)."""
        if self.every_team:
            found = team_of_topic(self.prefix, topic)
            return found[0] if found else ""
        return self.team

    def dlq_of(self, topic: str) -> str:
        """Where a dead letter of a record read from ``topic`` goes: the dlq beside it."""
        if self.every_team:
            team = self.team_of(topic)
            if team:
                return team_topics(self.prefix, team).dlq
            return Topics(self.prefix).dlq  # not reachable through the pattern; kept total
        return self._fixed_topics().dlq

    def describe(self) -> str:
        """What the notifier logs it consumes."""
        if self.every_team:
            return f"every team's alerts topic {self.prefix}.<team>.alerts"
        return self.topics[0]


__all__ = ["AlertSubscription"]
