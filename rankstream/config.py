"""One place for configuration: ``RANKSTREAM_*`` environment variables, overridable by flags.

Every component (producer, worker, sink, CLI, compose file) reads the same
names, listed in :data:`ENV_VARS`. A plain dataclass keeps the producer's
install free of config libraries.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rankstream.errors import ConfigError
from rankstream.topics import DEFAULT_PREFIX, Topics

ENV_PREFIX = "RANKSTREAM_"
#: ``RANKSTREAM_TEAM`` value of a shared worker / sink / notifier serving every team's topics.
ALL_TEAMS = "*"

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


__all__ = ["ALL_TEAMS", "ConfigError", "Settings", "read_yaml_file", "team_prefix_of"]


def _default_state_dir() -> Path:
    return Path.cwd() / ".rankstream"


def _default_spool_dir() -> Path:
    """A per-user local cache directory (XDG): the working directory of a job is often NFS/Lustre."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "rankstream" / "spool"


def read_yaml_file(path: str | Path, what: str) -> Any:
    """The parsed content of a YAML config file; a missing, unreadable or malformed file is a one-line
    :class:`ConfigError` starting with ``<what> <path>:``."""
    import yaml

    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def team_prefix_of(prefix: str, team: str) -> str:
    """One team's topic prefix ``<prefix>.<team>``, ``prefix`` itself when it already names the team (or no
    team is given)."""
    if not team or prefix.rsplit(".", 1)[-1] == team:
        return prefix
    return f"{prefix}.{team}"


@dataclass(frozen=True)
class Settings:
    """Settings shared by all components. Field ``x`` is read from ``RANKSTREAM_X``."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = DEFAULT_PREFIX
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_password: str = field(default="", repr=False)
    state_dir: str = ""  # empty: ./.rankstream (the spool then defaults to a local cache directory)
    spool_dir: str = ""  # where reporters spool; see spool_path
    store_dsn: str = ""
    kafka_port: int = 9092
    kafka_controller_port: int = 0  # 0: kafka_port + 1
    partitions: int = 6
    http_port: int = 8123
    #: The team whose topics this process serves (per-team topic prefixes with Kafka ACLs, docs/access.md):
    #: the stream worker and the sink take every run's team from it, not from what run_start's meta claims.
    #: ``*`` (ALL_TEAMS): one shared service for every team's ``<prefix>.<team>.*`` topics, each record's team
    #: taken from the topic it came through.
    team: str = ""

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            allowed = ", ".join(SECURITY_PROTOCOLS)
            raise ConfigError(f"RANKSTREAM_SECURITY_PROTOCOL={self.security_protocol!r}: expected one of {allowed}")
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism not in SASL_MECHANISMS:
            allowed = ", ".join(SASL_MECHANISMS)
            raise ConfigError(
                f"RANKSTREAM_SASL_MECHANISM={self.sasl_mechanism!r}: "
                f"with {self.security_protocol} expected one of {allowed}"
            )
        if not self.topic_prefix or any(c in self.topic_prefix for c in " /\\:"):
            raise ConfigError(f"RANKSTREAM_TOPIC_PREFIX={self.topic_prefix!r}: must be a non-empty Kafka name")
        if self.partitions < 1:
            raise ConfigError("RANKSTREAM_PARTITIONS must be >= 1")
        if self.team and self.team != ALL_TEAMS and not all(c.isalnum() or c in "_-" for c in self.team):
            raise ConfigError(
                f"RANKSTREAM_TEAM={self.team!r}: letters, digits, '_' and '-' only, or '*' for every team's topics"
            )

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``RANKSTREAM_*`` variables; non-None ``overrides`` (flags) win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            if f.type in ("int", int):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: expected an integer") from None
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    # ---------------------------------------------------------------- derived

    @property
    def team_prefix(self) -> str:
        """The prefix of this process's own topics. With one team (``RANKSTREAM_TEAM=vision``) that team's
        ``<prefix>.vision``, whether the prefix given is the deployment's (``rankstream``) or already the
        team's (``rankstream.vision``): a job, worker, sink and notifier of one team name the same topics
        either way. Otherwise (no team, or ``*``) the prefix itself."""
        return team_prefix_of(self.topic_prefix, self.fixed_team)

    @property
    def topics(self) -> Topics:
        return Topics(self.team_prefix)

    @property
    def all_teams(self) -> bool:
        """One shared service for every team's topics (``RANKSTREAM_TEAM=*``)."""
        return self.team == ALL_TEAMS

    @property
    def fixed_team(self) -> str:
        """The one team every run of this process belongs to; "" when none is fixed (no team topics, or ``*``)."""
        return "" if self.team == ALL_TEAMS else self.team

    @property
    def controller_port(self) -> int:
        return self.kafka_controller_port or self.kafka_port + 1

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser().resolve() if self.state_dir else _default_state_dir()

    @property
    def dsn(self) -> str:
        """Store DSN: explicit, or the embedded chDB store under the state directory."""
        if self.store_dsn:
            return self.store_dsn
        return f"chdb://{self.state_path / 'store'}"

    @property
    def spool_path(self) -> Path:
        """Reporters' spool root: ``spool_dir``, else ``<state_dir>/spool`` when a state directory is set,
        else ``$XDG_CACHE_HOME/rankstream/spool`` (``~/.cache/rankstream/spool``), never the working directory."""
        if self.spool_dir:
            return Path(self.spool_dir).expanduser().resolve()
        if self.state_dir:
            return self.state_path / "spool"
        return _default_spool_dir()

    def _sasl_kwargs(self) -> dict[str, Any]:
        """SASL settings; kafka-python and aiokafka use the same argument names."""
        if not self.security_protocol.startswith("SASL"):
            return {}
        return {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": self.sasl_password,
        }

    def kafka_python_kwargs(self) -> dict[str, Any]:
        """Connection and security settings for kafka-python clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
            **self._sasl_kwargs(),
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            files = {
                "ssl_cafile": self.ssl_cafile,
                "ssl_certfile": self.ssl_certfile,
                "ssl_keyfile": self.ssl_keyfile,
                "ssl_password": self.ssl_password,
            }
            kwargs.update({k: v for k, v in files.items() if v})
        return kwargs

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS context for asyncio clients (aiokafka, Faust), or None without TLS."""
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        context = ssl.create_default_context(cafile=self.ssl_cafile or None)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None, self.ssl_password or None)
        return context

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Connection and security settings for aiokafka clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            **self._sasl_kwargs(),
        }
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        return kwargs


#: Every environment variable the project reads (the compose file must use only these).
ENV_VARS: tuple[str, ...] = tuple(ENV_PREFIX + f.name.upper() for f in fields(Settings))
