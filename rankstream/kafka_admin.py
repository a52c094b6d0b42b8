"""Kafka admin helpers the runtime needs: is the broker there, create the contract topics, wait for them.

Used by the stream worker, the CLI and the local launcher (``rankstream.dev.stack``); they talk to
any Kafka cluster the settings point at, and never start anything.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from rankstream.config import Settings
from rankstream.errors import ServiceUnavailable


class TopicsUnavailable(ServiceUnavailable):
    """The contract topics could not be created or did not show up with partition leaders."""


def broker_ready(bootstrap: str, timeout_s: float = 3.0, security: Mapping[str, Any] | None = None) -> bool:
    """A real metadata round trip against the broker (``security``: SASL/SSL client settings)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
            client_id="rankstream-admin",
            **(security or {}),
        )
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.describe_cluster()
        return True
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        with contextlib.suppress(Exception):
            admin.close()


def wait_for_topics(admin: object, names: list[str], timeout_s: float = 15.0) -> set[str]:
    """Topics the cluster lists, polled until ``names`` all show up with partition leaders or the timeout passes.

    A topic just created (by us or by ``rankstream topics create`` a moment ago)
    can be missing from metadata for a short while; callers that act on it next
    (producers, the worker) must not race that.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        existing = set(admin.list_topics())  # type: ignore[attr-defined]
        if set(names) <= existing and _have_leaders(admin, names):
            return existing
        if time.monotonic() >= deadline:
            return existing
        time.sleep(0.2)


def _have_leaders(admin: object, names: list[str]) -> bool:
    """Every partition of ``names`` has a leader: consumers joining now get assignments.

    (A consumer group that joins while a new topic has no partition leaders yet is
    assigned nothing and only notices at its next metadata refresh.)
    """
    if not names:
        return True
    for topic in admin.describe_topics(names):  # type: ignore[attr-defined]
        partitions = topic.get("partitions") or []
        if topic.get("error_code", 0) or not partitions:
            return False
        if any(p.get("leader_id", -1) < 0 or p.get("error_code", 0) for p in partitions):
            return False
    return True


def ensure_topics(settings: Settings, partitions: int | None = None, bootstrap: str | None = None) -> list[str]:
    """Create the contract topics that do not exist yet; returns the ones created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    kwargs = settings.kafka_python_kwargs()
    if bootstrap:
        kwargs["bootstrap_servers"] = bootstrap
    admin = KafkaAdminClient(client_id="rankstream-topics", request_timeout_ms=15000, **kwargs)
    try:
        existing = set(admin.list_topics())
        wanted = [t for t in settings.topics.all() if t not in existing]
        count = partitions or settings.partitions
        created: list[str] = []
        for name in wanted:
            try:
                admin.create_topics([NewTopic(name, num_partitions=count, replication_factor=1)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        missing = set(settings.topics.all()) - wait_for_topics(admin, list(settings.topics.all()))
        if missing:
            raise TopicsUnavailable(f"topics not visible after creation: {', '.join(sorted(missing))}")
        return created
    finally:
        admin.close()
