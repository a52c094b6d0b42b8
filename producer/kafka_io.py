"""The only place that talks to kafka-python: bounded-time producer creation, acked delivery, the transport.

kafka-python 3.x bootstraps eagerly in its constructor and waits for metadata
in the first ``send``; with its defaults a dead broker blocks for 30-60 s.
Every timeout here is short and explicit, and these functions are only ever
called from a background thread or from the CLI, never from a training step.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from rankstream.config import Settings
from rankstream.errors import ServiceUnavailable, one_line
from rankstream.producer.transport import Producer, failure_reason

log = logging.getLogger("rankstream.producer")

BOOTSTRAP_TIMEOUT_MS = 3000
MAX_BLOCK_MS = 3000
REQUEST_TIMEOUT_MS = 5000
DELIVERY_TIMEOUT_MS = 10000


class DeliveryError(ServiceUnavailable):
    """Kafka did not acknowledge a batch; the one-line message says why."""


def make_producer(settings: Settings, client_id: str, **overrides: Any) -> Any:
    """An idempotent (acks=all) KafkaProducer whose every wait is bounded.

    Raises ``kafka.errors.KafkaError`` (e.g. KafkaTimeoutError) or OSError when
    the broker cannot be reached within ~3 s.
    """
    from kafka import KafkaProducer

    config: dict[str, Any] = {
        **settings.kafka_python_kwargs(),
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 20,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
        "max_block_ms": MAX_BLOCK_MS,
        "request_timeout_ms": REQUEST_TIMEOUT_MS,
        "delivery_timeout_ms": DELIVERY_TIMEOUT_MS,
        "retry_backoff_ms": 200,
        "reconnect_backoff_ms": 100,
        "reconnect_backoff_max_ms": 2000,
        "metrics_enabled": False,
    }
    config.update(overrides)
    producer = KafkaProducer(**config)
    # kafka-python registers an atexit close; the reporter closes its producer
    # itself (after its own final flush), so an earlier close would only lose time.
    unregister = getattr(producer, "_unregister_cleanup", None)
    if callable(unregister):
        with contextlib.suppress(Exception):
            unregister()
    return producer


class KafkaTransport:
    """The sender's default :class:`~rankstream.producer.transport.Transport`: kafka-python, bounded waits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def connect_timeout_s(self) -> float:
        return BOOTSTRAP_TIMEOUT_MS / 1000

    def connect(self, client_id: str) -> Producer:
        return make_producer(self.settings, client_id=client_id)

    def release(self, producer: Producer, timeout: float) -> None:
        close_producer(producer, timeout=timeout)


def close_producer(producer: Any, timeout: float = 0.0) -> None:
    """Close without raising; timeout 0 abandons unacknowledged records (they are spooled by the caller)."""
    if producer is None:
        return
    try:
        producer.close(timeout=timeout)
        return
    except Exception:  # kafka-python's close() flushes first and raises when that times out
        pass
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        with contextlib.suppress(Exception):
            sender.force_close()  # fails the unacknowledged batches and closes the sockets
            sender.join(2.0)
    with contextlib.suppress(Exception):
        producer.close(timeout=0)


def deliver(producer: Producer, topic: str, records: Sequence[tuple[bytes, bytes]], timeout: float) -> None:
    """Send ``(key, value)`` records and wait until Kafka acknowledged all of them.

    Raises :class:`DeliveryError` if any record fails or the acks do not arrive within ``timeout``.
    """
    futures = []
    try:
        for key, value in records:
            futures.append(producer.send(topic, value=value, key=key))
    except Exception as exc:
        raise DeliveryError(one_line(exc)) from exc
    deadline = time.monotonic() + timeout
    try:
        producer.flush(timeout=max(deadline - time.monotonic(), 0.01))
    except Exception as exc:
        raise DeliveryError(f"no acknowledgement within {timeout:.0f}s ({one_line(exc)})") from exc
    for future in futures:
        if not future.is_done:
            raise DeliveryError(f"no acknowledgement within {timeout:.0f}s")
        if future.failed():
            raise DeliveryError(failure_reason(future))
