"""Shared fixtures: a real Kafka broker for the whole session, isolated topics per test.

The broker runs from ``.rankstream/test`` on ports 19092/19093 (override with
RANKSTREAM_TEST_KAFKA_PORT) so the suite never touches a developer's own stack.
If it is already running (``make test`` starts it first) the session reuses it
and leaves it running; otherwise the session starts it and stops it at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.dev.stack import broker_status, start_broker, stop_broker
from rankstream.kafka_admin import ensure_topics

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_STATE_DIR = REPO_ROOT / ".rankstream" / "test"
TEST_KAFKA_PORT = int(os.environ.get("RANKSTREAM_TEST_KAFKA_PORT", "19092"))


def _broker_settings() -> Settings:
    return Settings(
        state_dir=str(TEST_STATE_DIR),
        kafka_port=TEST_KAFKA_PORT,
        kafka_controller_port=TEST_KAFKA_PORT + 1,
        bootstrap_servers=f"127.0.0.1:{TEST_KAFKA_PORT}",
    )


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Settings]:
    """The session's broker; yields settings pointing at it (default topic prefix)."""
    settings = _broker_settings()
    already = broker_status(settings).ready
    start_broker(settings)
    try:
        yield settings
    finally:
        if not already:
            stop_broker(settings)


@pytest.fixture
def kafka(kafka_broker: Settings, tmp_path: Path) -> Settings:
    """Settings with a unique topic prefix whose four contract topics exist (3 partitions)."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = kafka_broker.with_overrides(topic_prefix=prefix, state_dir=str(tmp_path / "state"), partitions=3)
    ensure_topics(settings)
    return settings
