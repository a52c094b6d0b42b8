"""Fixtures of the integration tests beyond the session broker of tests/conftest.py."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.dev.stack import start_broker, stop_broker
from rankstream.kafka_access import TeamPrincipal
from rankstream.kafka_admin import ensure_topics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Settings]:
    """A broker of the test's own, on free ports, for tests that stop, kill or restart it (the session
    broker is shared with every other test): topics prefixed ``outage``, one partition."""
    port, cport = free_port(), free_port()
    settings = Settings(
        state_dir=str(tmp_path / "broker"),
        kafka_port=port,
        kafka_controller_port=cport,
        bootstrap_servers=f"127.0.0.1:{port}",
        topic_prefix="outage",
        partitions=1,
    )
    start_broker(settings)
    ensure_topics(settings)
    try:
        yield settings
    finally:
        stop_broker(settings)


@dataclass(frozen=True)
class SecureBroker:
    """Teams on the session's secure broker (SASL_PLAINTEXT + SCRAM-SHA-512, ACLs) under one topic prefix: their
    principals, the service principal (every right under the prefix), the super user in ``settings``."""

    settings: Settings
    teams: dict[str, TeamPrincipal]
    service: tuple[str, str]

    def as_user(self, user: str, password: str) -> Settings:
        return self.settings.with_overrides(sasl_username=user, sasl_password=password)

    def as_team(self, team: str) -> Settings:
        principal = self.teams[team]
        return self.as_user(principal.user, principal.password).with_overrides(
            topic_prefix=f"{self.settings.topic_prefix}.{team}"
        )

    def service_env(self) -> dict[str, str]:
        """Environment of a worker / sink / notifier running as the service principal."""
        return {
            "RANKSTREAM_SECURITY_PROTOCOL": self.settings.security_protocol,
            "RANKSTREAM_SASL_MECHANISM": self.settings.sasl_mechanism,
            "RANKSTREAM_SASL_USERNAME": self.service[0],
            "RANKSTREAM_SASL_PASSWORD": self.service[1],
        }


@pytest.fixture(scope="session")
def secure_broker_admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One secure broker for the session's access tests (never the shared plaintext one; starting one costs
    ~20 s): its super user's settings. Each test module provisions its own prefix with :func:`provision`."""
    port, cport = free_port(), free_port()
    settings = Settings(
        state_dir=str(tmp_path_factory.mktemp("sasl") / "state"),
        kafka_port=port,
        kafka_controller_port=cport,
        bootstrap_servers=f"127.0.0.1:{port}",
        topic_prefix="acl",
        partitions=1,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="admin",
        sasl_password=secrets.token_urlsafe(16),
    )
    start_broker(settings)
    try:
        yield settings
    finally:
        stop_broker(settings)


def provision(admin: Settings, prefix: str, user_prefix: str = "team-") -> SecureBroker:
    """Teams ``a`` and ``b`` (SCRAM users ``<user_prefix>a``...) and the service principal ``svc`` (password
    ``svc-<admin password>``) with their ACLs and topics under ``prefix`` on the secure broker."""
    from rankstream import kafka_access

    settings = admin.with_overrides(topic_prefix=prefix)
    teams = {t: TeamPrincipal(t, f"{user_prefix}{t}", secrets.token_urlsafe(16)) for t in ("a", "b")}
    service = ("svc", "svc-" + admin.sasl_password)
    kafka_access.apply(settings, teams.values(), service=service)
    return SecureBroker(settings, teams, service)
