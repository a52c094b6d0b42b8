"""Fixtures of the integration tests beyond the session broker of tests/conftest.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.dev.stack import start_broker, stop_broker
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
