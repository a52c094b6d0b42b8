"""ClickHouse server access control (roles, row policies, users) generated per team from one config.

chDB has no access management, so on the embedded store the HTTP layer plays
it (:mod:`.policy`); on a ClickHouse server the production path is real RBAC:
``rankstream store rbac infra/clickhouse/access.yaml`` prints the SQL that
``infra/clickhouse/rbac.sql`` holds for the example config. Row policies cover
every table of :data:`.tables.COLUMNS`, so a new table gets its policies
from the next generation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rankstream.errors import ConfigError
from rankstream.sinks.store.dsn import DATABASE
from rankstream.sinks.store.tables import COLUMNS

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class User:
    name: str
    identified: str  # the IDENTIFIED clause, e.g. "WITH sha256_password BY '...'"
    host: str | None = None


@dataclass(frozen=True)
class Team:
    name: str
    users: tuple[User, ...]


@dataclass(frozen=True)
class AccessConfig:
    sink: User
    teams: tuple[Team, ...]


def _ident(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not _IDENT_RE.match(value):
        raise ConfigError(f"{kind} {value!r}: letters, digits and '_' only, not starting with a digit")
    return value


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _user(where: str, raw: Any) -> User:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with name and password / password_sha256 / identified")
    name = _ident(f"{where} name", raw.get("name"))
    ways = [k for k in ("password", "password_sha256", "identified") if k in raw]
    if len(ways) != 1:
        raise ConfigError(f"{where} {name}: give exactly one of password, password_sha256, identified")
    value = str(raw[ways[0]])
    if ways[0] == "password":
        identified = f"WITH sha256_password BY {_literal(value)}"
    elif ways[0] == "password_sha256":
        if not _HEX64_RE.match(value):
            raise ConfigError(f"{where} {name}: password_sha256 must be 64 hex digits")
        identified = f"WITH sha256_hash BY {_literal(value.lower())}"
    else:  # e.g. "WITH ssl_certificate CN 'vision-ro'" or "WITH ldap SERVER 'corp'"
        if ";" in value:
            raise ConfigError(f"{where} {name}: identified must be one clause")
        identified = value
    host = raw.get("host")
    return User(name, identified, str(host) if host else None)


def load_config(path: Path) -> AccessConfig:
    """The access config (YAML); raises :class:`ConfigError` with the reason."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None
    return parse_config(raw, str(path))


def parse_config(raw: Any, where: str = "access config") -> AccessConfig:
    if not isinstance(raw, dict) or not isinstance(raw.get("teams"), list) or "sink" not in raw:
        raise ConfigError(f"{where}: expected 'sink:' (a user) and 'teams:' (a list)")
    sink = _user(f"{where}: sink", raw["sink"])
    teams: list[Team] = []
    seen: set[str] = {sink.name}
    for item in raw["teams"]:
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: each team is a mapping with name and users")
        team = _ident("team", item.get("name"))
        users = tuple(_user(f"{where}: team {team} user", u) for u in item.get("users") or [])
        for user in users:
            if user.name in seen:
                raise ConfigError(f"{where}: user {user.name} appears twice")
            seen.add(user.name)
        if team in {t.name for t in teams}:
            raise ConfigError(f"{where}: team {team} appears twice")
        teams.append(Team(team, users))
    return AccessConfig(sink, tuple(teams))


_HEADER = """\
-- rankstream access control for a ClickHouse server (>= 25.8), GENERATED from infra/clickhouse/access.yaml by
--   rankstream store rbac infra/clickhouse/access.yaml > infra/clickhouse/rbac.sql
-- (edit the config, not this file). chDB has no SQL access management, so this is for servers only;
-- tests/integration/sinks/test_schema.py checks that every statement parses (formatQuery) and that every
-- row-policy condition runs against the real tables.
--
-- Apply as an administrator, after `rankstream store migrate --dsn http://admin@host:8123`:
--   clickhouse-client --host HOST --user admin --multiquery < infra/clickhouse/rbac.sql
-- (requires access_management for the admin user).
--
-- Model: row policies are permissive per role and combine with OR; once a table has any
-- row policy, a user that none of them covers sees no rows. So the sink and the
-- administrators get an explicit "all rows" policy, and each team role sees its own rows.
"""


def render(config: AccessConfig) -> str:
    """The SQL script: reader and writer roles, the sink user, a role + row policies + users per team."""
    db, tables = DATABASE, list(COLUMNS)
    out = [_HEADER]
    out += [
        "-- Read-only access to the schema, shared by every team role.",
        "CREATE ROLE IF NOT EXISTS rankstream_reader;",
        f"GRANT SELECT ON {db}.* TO rankstream_reader;",
        "",
        "-- The sink's writer: inserts and migrations, sees all rows.",
        "CREATE ROLE IF NOT EXISTS rankstream_writer;",
        f"GRANT SELECT, INSERT, CREATE TABLE, ALTER TABLE, CREATE DATABASE ON {db}.* TO rankstream_writer;",
    ]
    sink = config.sink
    host = f" HOST {sink.host}" if sink.host else ""
    out += [
        f"CREATE USER IF NOT EXISTS {sink.name} IDENTIFIED {sink.identified}{host};",
        f"GRANT rankstream_writer TO {sink.name};",
        f"ALTER USER {sink.name} DEFAULT ROLE rankstream_writer;",
        "",
    ]
    out += [
        f"CREATE ROW POLICY IF NOT EXISTS all_rows ON {db}.{t} FOR SELECT USING 1 TO rankstream_writer;" for t in tables
    ]
    for team in config.teams:
        role = f"team_{team.name}"
        out += ["", f'-- Team "{team.name}": a role that sees only its rows, and read-only users holding it.']
        out += [f"CREATE ROLE IF NOT EXISTS {role};", f"GRANT rankstream_reader TO {role};"]
        condition = f"team = {_literal(team.name)}"
        out += [
            f"CREATE ROW POLICY IF NOT EXISTS {role} ON {db}.{t} FOR SELECT USING {condition} TO {role};"
            for t in tables
        ]
        for user in team.users:
            host = f" HOST {user.host}" if user.host else ""
            out += [
                f"CREATE USER IF NOT EXISTS {user.name} IDENTIFIED {user.identified}{host} SETTINGS readonly = 1;",
                f"GRANT {role} TO {user.name};",
                f"ALTER USER {user.name} DEFAULT ROLE {role};",
            ]
    return "\n".join(out) + "\n"
