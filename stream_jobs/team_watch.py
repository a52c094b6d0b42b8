"""Which teams' events topics exist: the shared worker's discovery of ``<prefix>.<team>.events``.

Why list topics instead of subscribing by pattern: Faust's aiokafka driver
subscribes by topic list only (faust/transport/drivers/aiokafka.py: "XXX pattern
does not work"), so the shared worker lists the broker's topics at start and
every :data:`DISCOVER_EVERY_S`, and adds a lane for each new team. Before a
team's lane exists its detector state topic ``<prefix>.<team>.stream-state`` is
created (compacted, the events topic's partition count), as a per-team worker's
start does. Blocking kafka-python admin calls: the worker runs them in a thread.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from rankstream.config import Settings
from rankstream.kafka_access import team_of_topic, team_topics
from rankstream.stream_jobs.detector_state import create_state_topics
from rankstream.topics import Topics

log = logging.getLogger("rankstream.worker")

#: Seconds between two listings of the broker's topics (a new team's first events wait at most this
#: plus a resubscription and a rebalance).
DISCOVER_EVERY_S = 15.0


def team_events_topics(prefix: str, names: Any) -> dict[str, Topics]:
    """team -> its contract topics, for every ``<prefix>.<team>.events`` among topic ``names``."""
    found: dict[str, Topics] = {}
    for name in names:
        parsed = team_of_topic(prefix, name)
        if parsed is not None and parsed[1] == "events":
            found[parsed[0]] = team_topics(prefix, parsed[0])
    return found


class TeamWatch:
    """Finds team events topics not served yet and readies their state topics (one admin client, reused)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._admin: Any = None

    def new_teams(self, known: set[str]) -> dict[str, Topics]:
        """team -> topics for each team whose events topic exists and is not in ``known`` (events topic names),
        with its state topic created (a team whose events topic cannot be described yet waits for the next
        call). Raises kafka-python's errors when the broker cannot be asked."""
        admin = self._client()
        try:
            names = set(admin.list_topics())
            found = {
                team: topics
                for team, topics in team_events_topics(self._settings.topic_prefix, names).items()
                if topics.events not in known
            }
            if not found:
                return {}
            ready = {topics.events for topics in create_state_topics(admin, found.values(), names)}
            return {team: topics for team, topics in found.items() if topics.events in ready}
        except Exception:
            self.close()  # a fresh client next time (the broker may have moved or restarted)
            raise

    def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()

    def _client(self) -> Any:
        if self._admin is None:
            from kafka import KafkaAdminClient

            self._admin = KafkaAdminClient(
                client_id="rankstream-worker", request_timeout_ms=15000, **self._settings.kafka_python_kwargs()
            )
        return self._admin


__all__ = ["DISCOVER_EVERY_S", "TeamWatch", "team_events_topics"]
