"""Team identity on Kafka: each team's jobs authenticate as the team's SCRAM principal and may write only its topics.

Topic naming: a team's jobs, stream worker and sink use the topic prefix
``<prefix>.<team>`` (``RANKSTREAM_TOPIC_PREFIX=rankstream.vision``: topics
``rankstream.vision.events``, ``.steps``, ``.alerts``, ``.dlq``). A team principal may
write that events topic and read that alerts topic (and use consumer groups named
``<prefix>.<team>...``), nothing else; the service principal (stream workers and
sinks) has every right under ``<prefix>.``. So which topic an event came through
says which team sent it, whatever its ``meta`` claims. infra/kafka/README.md has the
production commands: ``rankstream access kafka TEAMS.yaml`` prints them (:func:`render_commands`)
or, with ``--apply``, creates them on a broker (:func:`apply`); the YAML is read by
:func:`load_access_config`.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankstream.config import Settings, read_yaml_file
from rankstream.errors import ConfigError, OperationFailed, ServiceUnavailable, one_line
from rankstream.topics import Topics

_TEAM_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: SCRAM user names: Kafka escapes ',' and '=' in them; keeping to these also keeps the printed commands plain.
_USER_RE = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")


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


def topics_matching(pattern: str, topics: Iterable[str]) -> tuple[str, ...]:
    """Those of ``topics`` that ``pattern`` (a :func:`team_topic_pattern`) matches, sorted: what a shared
    service subscribes to."""
    compiled = _compiled(pattern)
    return tuple(sorted(t for t in topics if compiled.match(t)))


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


@dataclass(frozen=True)
class Applied:
    """What :func:`apply` did: SCRAM users created or updated, ACLs ensured, topics created (existing ones kept)."""

    users: tuple[str, ...]
    acls: int
    topics_created: tuple[str, ...]


def apply(
    settings: Settings,
    teams: Iterable[TeamPrincipal],
    service: tuple[str, str] | None = None,
    *,
    replication_factor: int = 1,
) -> Applied:
    """Create the teams' SCRAM users, their topics and ACLs, and the service principal ``(user, password)``'s,
    as the super user of ``settings``. Idempotent: a user's password is set again, existing ACLs and topics stay.
    An unreachable broker is :class:`ServiceUnavailable`; a refusal (not a super user ...) :class:`OperationFailed`."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    teams = list(teams)
    try:
        admin = KafkaAdminClient(
            client_id="rankstream-access",
            request_timeout_ms=15000,
            bootstrap_timeout_ms=10_000,
            **settings.kafka_python_kwargs(),
        )
    except (KafkaError, OSError) as exc:
        raise ServiceUnavailable(f"Kafka at {settings.bootstrap_servers} unavailable: {one_line(exc)}") from None
    try:
        return _apply(admin, settings, teams, service, replication_factor)
    except KafkaError as exc:
        raise OperationFailed(f"setting up access on {settings.bootstrap_servers} failed: {one_line(exc)}") from None
    finally:
        admin.close()


def _apply(
    admin: Any, settings: Settings, teams: list[TeamPrincipal], service: tuple[str, str] | None, replication: int
) -> Applied:
    from kafka.admin import NewTopic, UserScramCredentialUpsertion
    from kafka.errors import TopicAlreadyExistsError

    mechanism = settings.sasl_mechanism or "SCRAM-SHA-512"
    users = [(t.user, t.password) for t in teams] + ([service] if service else [])
    errors = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(user, mechanism, password) for user, password in users]
    )
    bad = {user: err for user, err in (errors or {}).items() if err}
    if bad:
        raise OperationFailed(f"creating SCRAM users failed: {bad}")
    grants = [g for t in teams for g in team_grants(settings.topic_prefix, t)]
    if service:
        grants += service_grants(settings.topic_prefix, service[0])
    result = admin.create_acls([_acl(g) for g in grants])
    failed = result.get("failed") if isinstance(result, dict) else None
    if failed:
        raise OperationFailed(f"creating ACLs failed: {failed[0]}")
    created = []
    for team in teams:
        for name in team_topics(settings.topic_prefix, team.team).all():
            try:
                admin.create_topics(
                    [NewTopic(name, num_partitions=settings.partitions, replication_factor=replication)]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass
    return Applied(tuple(user for user, _ in users), len(grants), tuple(created))


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


# ---------------------------------------------------------------------- the teams YAML


@dataclass(frozen=True)
class PasswordRef:
    """Where a SCRAM password is read from at ``--apply`` time: an environment variable or a file (never the YAML)."""

    env: str = ""
    file: str = ""

    def read(self, where: str, env: Mapping[str, str]) -> str:
        if self.env:
            value = env.get(self.env, "")
            if not value:
                raise ConfigError(f"{where}: environment variable {self.env} is not set")
            return value
        path = Path(self.file).expanduser()
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{where}: {path} is empty")
        return value


@dataclass(frozen=True)
class AccessConfig:
    """The teams YAML of ``rankstream access kafka``: each team's SCRAM user, the service user, where their
    passwords are. Printing the commands needs no password; :meth:`principals` reads them (``--apply``)."""

    teams: tuple[tuple[TeamPrincipal, PasswordRef], ...]
    service_user: str
    service_password: PasswordRef
    prefix: str = ""  # "" : the settings' prefix

    @property
    def team_principals(self) -> list[TeamPrincipal]:
        """The teams without passwords (what :func:`render_commands` needs)."""
        return [principal for principal, _ in self.teams]

    def principals(self, env: Mapping[str, str] | None = None) -> tuple[list[TeamPrincipal], tuple[str, str]]:
        """The teams with their passwords, and the service ``(user, password)``; a missing one is a ConfigError."""
        env = os.environ if env is None else env
        teams = [TeamPrincipal(p.team, p.user, ref.read(f"teams.{p.team}.password", env)) for p, ref in self.teams]
        return teams, (self.service_user, self.service_password.read("service.password", env))


def _user(raw: Mapping[str, Any], where: str) -> str:
    user = raw.get("user")
    if not isinstance(user, str) or not _USER_RE.match(user):
        raise ConfigError(f"{where}.user: expected a SCRAM user name (letters, digits, '.', '_', '@', '-')")
    return user


def _password_ref(raw: Mapping[str, Any], where: str) -> PasswordRef:
    if "password" in raw:
        raise ConfigError(f"{where}.password: passwords never go in this file; use password_env or password_file")
    env, file = raw.get("password_env", ""), raw.get("password_file", "")
    if not isinstance(env, str) or not isinstance(file, str) or bool(env) == bool(file):
        raise ConfigError(f"{where}: give exactly one of password_env (a variable name) or password_file (a path)")
    return PasswordRef(env=env, file=file)


def parse_access_config(raw: Any) -> AccessConfig:
    """Build the teams config from parsed YAML; every problem is a one-line :class:`ConfigError` naming the key."""
    if not isinstance(raw, dict):
        raise ConfigError("access config: expected a mapping at the top level")
    unknown = sorted(set(raw) - {"prefix", "service", "teams"})
    if unknown:
        raise ConfigError(f"access config: unknown key {unknown[0]!r:.40} (expected prefix, service, teams)")
    prefix = raw.get("prefix", "")
    if not isinstance(prefix, str):
        raise ConfigError("prefix: expected a string")
    service = raw.get("service")
    if not isinstance(service, dict):
        raise ConfigError("service: expected a mapping with user and password_env or password_file")
    teams_raw = raw.get("teams")
    if not isinstance(teams_raw, list) or not teams_raw:
        raise ConfigError("teams: expected a list of {team, user, password_env | password_file}")
    teams: list[tuple[TeamPrincipal, PasswordRef]] = []
    for i, item in enumerate(teams_raw):
        where = f"teams[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping")
        name = item.get("team")
        if not isinstance(name, str) or not _TEAM_RE.match(name):
            raise ConfigError(f"{where}.team: {name!r:.40}: letters, digits, '_' and '-' only (part of topic names)")
        teams.append((TeamPrincipal(name, _user(item, where)), _password_ref(item, where)))
    service_user = _user(service, "service")
    for kind, values in (("team", [p.team for p, _ in teams]), ("user", [p.user for p, _ in teams] + [service_user])):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"teams: {kind} {repeated[0]!r} appears more than once")
    return AccessConfig(tuple(teams), service_user, _password_ref(service, "service"), prefix)


def load_access_config(path: str | Path) -> AccessConfig:
    """Read and parse a teams YAML file."""
    return parse_access_config(read_yaml_file(path, "access config"))
