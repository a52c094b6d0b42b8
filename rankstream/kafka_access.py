"""Team identity on Kafka: each team's jobs authenticate as the team's SCRAM principal and may write only its topics.

Topic naming: a team's jobs, stream worker and sink use the topic prefix
``<prefix>.<team>`` (``RANKSTREAM_TOPIC_PREFIX=rankstream.vision``: topics
``rankstream.vision.events``, ``.steps``, ``.alerts``, ``.dlq``). A team principal may
write that events topic and read that alerts topic (and use consumer groups named
``<prefix>.<team>...``), nothing else; the service principal (stream workers and
sinks) has every right under ``<prefix>.``. So which topic an event came through
says which team sent it, whatever its ``meta`` claims. infra/kafka/README.md has the
production commands (:func:`render_commands` prints them).
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rankstream.config import Settings
from rankstream.errors import ConfigError, ServiceUnavailable
from rankstream.topics import Topics

_TEAM_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class TeamPrincipal:
    """A team and the SCRAM user its jobs authenticate as."""

    team: str
    user: str
    password: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not _TEAM_RE.match(self.team):
            raise ConfigError(f"team {self.team!r}: letters, digits, '_' and '-' only (it is part of topic names)")


def claim_team(event: dict[str, Any], team: str) -> str | None:
    """Give a decoded event the team of the topics it came through; returns the other team its run_start
    claimed (to be counted), or None. Only run_start carries a team (``meta.team``)."""
    if not team or event.get("kind") != "run_start":
        return None
    meta = event.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    claimed = meta.get("team")
    meta["team"] = team
    event["meta"] = meta
    return str(claimed) if claimed not in (None, "", team) else None


def team_topics(prefix: str, team: str) -> Topics:
    """The contract topics of ``team``: ``<prefix>.<team>.events`` ..."""
    return Topics(f"{prefix}.{team}")


#: The topic kinds of a team (``<prefix>.<team>.<kind>``), as named by :class:`~rankstream.topics.Topics`.
TOPIC_KINDS = ("events", "steps", "alerts", "dlq")


def team_topic_pattern(prefix: str, kinds: Iterable[str] = TOPIC_KINDS) -> str:
    """A regular expression matching every team's topics of ``kinds`` under ``prefix`` (shared services
    subscribe with it: ``RANKSTREAM_TEAM=*``); group ``team`` is the team. The prefix's own topics
    (``<prefix>.events``) do not match: a team name is one dot-free segment."""
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in TOPIC_KINDS]
    if unknown or not kinds:
        raise ValueError(f"topic kinds {unknown or kinds}: expected some of {', '.join(TOPIC_KINDS)}")
    return rf"^{re.escape(prefix)}\.(?P<team>[A-Za-z0-9_-]{{1,64}})\.(?P<kind>{'|'.join(kinds)})$"


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@functools.lru_cache(maxsize=65536)
def team_of_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """``(team, kind)`` of a team topic ``<prefix>.<team>.<kind>``; None for any other topic."""
    match = _compiled(team_topic_pattern(prefix)).match(topic)
    return (match["team"], match["kind"]) if match else None


@dataclass(frozen=True)
class Grant:
    """One ACL: ``operation`` on a topic or group name (literal, or every name with this prefix)."""

    principal: str
    operation: str  # READ, WRITE, DESCRIBE, CREATE, ALL
    resource: str  # TOPIC or GROUP
    name: str
    prefixed: bool = False


def team_grants(prefix: str, principal: TeamPrincipal) -> list[Grant]:
    """What a team's jobs and tools may do: write its events, read its alerts, use its own consumer groups."""
    topics, user = team_topics(prefix, principal.team), principal.user
    return [
        Grant(user, "WRITE", "TOPIC", topics.events),
        Grant(user, "DESCRIBE", "TOPIC", topics.events),
        Grant(user, "READ", "TOPIC", topics.alerts),
        Grant(user, "DESCRIBE", "TOPIC", topics.alerts),
        Grant(user, "READ", "GROUP", f"{topics.prefix}.", prefixed=True),
    ]


def service_grants(prefix: str, user: str) -> list[Grant]:
    """The stream workers' and sinks' principal: everything under ``<prefix>.`` (topics and groups)."""
    return [
        Grant(user, "ALL", "TOPIC", f"{prefix}.", prefixed=True),
        Grant(user, "ALL", "GROUP", prefix, prefixed=True),
    ]


def _acl(grant: Grant) -> object:
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    pattern = ACLResourcePatternType.PREFIXED if grant.prefixed else ACLResourcePatternType.LITERAL
    return ACL(
        principal=f"User:{grant.principal}",
        host="*",
        operation=getattr(ACLOperation, grant.operation),
        permission_type=ACLPermissionType.ALLOW,
        resource_pattern=ResourcePattern(getattr(ResourceType, grant.resource), grant.name, pattern),
    )


def apply(settings: Settings, teams: Iterable[TeamPrincipal], service: tuple[str, str] | None = None) -> None:
    """Create the teams' SCRAM users, their topics and ACLs, and the service principal ``(user, password)``'s,
    as the super user of ``settings``."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    teams = list(teams)
    try:
        admin = KafkaAdminClient(
            client_id="rankstream-access", request_timeout_ms=15000, **settings.kafka_python_kwargs()
        )
    except (KafkaError, OSError) as exc:
        raise ServiceUnavailable(f"Kafka at {settings.bootstrap_servers} unavailable: {exc}") from None
    try:
        from kafka.admin import UserScramCredentialUpsertion

        mechanism = settings.sasl_mechanism or "SCRAM-SHA-512"
        errors = admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(t.user, mechanism, t.password) for t in teams]
            + ([UserScramCredentialUpsertion(service[0], mechanism, service[1])] if service else [])
        )
        bad = {user: err for user, err in (errors or {}).items() if err}
        if bad:
            raise ServiceUnavailable(f"creating SCRAM users failed: {bad}")
        grants = [g for t in teams for g in team_grants(settings.topic_prefix, t)]
        if service:
            grants += service_grants(settings.topic_prefix, service[0])
        result = admin.create_acls([_acl(g) for g in grants])
        failed = result.get("failed") if isinstance(result, dict) else None
        if failed:
            raise ServiceUnavailable(f"creating ACLs failed: {failed[0]}")
        for team in teams:
            for name in team_topics(settings.topic_prefix, team.team).all():
                try:
                    admin.create_topics([NewTopic(name, num_partitions=settings.partitions, replication_factor=1)])
                except TopicAlreadyExistsError:
                    pass
    finally:
        admin.close()


def render_commands(prefix: str, teams: Iterable[TeamPrincipal], service_user: str, bootstrap: str) -> str:
    """The production set-up as Kafka's own CLI commands (``kafka-configs.sh``, ``kafka-acls.sh``)."""
    teams = list(teams)
    config = "--command-config admin.properties"
    lines = ["# SCRAM users (passwords from your secret store, never from this file)"]
    for t in [*teams, TeamPrincipal("service", service_user)]:
        lines.append(
            f"kafka-configs.sh --bootstrap-server {bootstrap} {config} --alter --entity-type users "
            f"--entity-name {shlex.quote(t.user)} --add-config 'SCRAM-SHA-512=[password=CHANGE-ME]'"
        )
    lines.append("# ACLs")
    grants = [g for t in teams for g in team_grants(prefix, t)] + service_grants(prefix, service_user)
    for g in grants:
        resource = "--topic" if g.resource == "TOPIC" else "--group"
        pattern = " --resource-pattern-type prefixed" if g.prefixed else ""
        lines.append(
            f"kafka-acls.sh --bootstrap-server {bootstrap} {config} --add --allow-principal User:{g.principal} "
            f"--operation {g.operation.capitalize()} {resource} {shlex.quote(g.name)}{pattern}"
        )
    return "\n".join(lines) + "\n"
