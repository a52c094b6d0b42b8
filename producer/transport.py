"""The seam between a reporter's sender thread and the broker, as small protocols.

The sender needs little from Kafka: open a producer (bounded in time), send
one record and poll its future, flush, and close without raising. Keeping that
behind :class:`Transport` lets the sender's failure paths (broker down, a send
failing, acks stalling, a broker returning during ``close()``) be tested with an
in-memory fake; :class:`rankstream.producer.kafka_io.KafkaTransport` is the real one.
"""

from __future__ import annotations

from typing import Protocol

from rankstream.errors import one_line


class SendFuture(Protocol):
    """The pending acknowledgement of one record (kafka-python's ``FutureRecordMetadata`` fits)."""

    @property
    def is_done(self) -> bool: ...

    @property
    def exception(self) -> BaseException | None: ...

    def failed(self) -> bool: ...


class Producer(Protocol):
    """An open connection that sends records (kafka-python's ``KafkaProducer`` fits)."""

    def send(self, topic: str, value: bytes, key: bytes) -> SendFuture: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


class Transport(Protocol):
    """Opens and closes producers for one sender; every call may block only for a bounded time."""

    @property
    def connect_timeout_s(self) -> float:
        """The longest ``connect`` takes before it gives up (``close()`` plans its last attempt with it)."""
        ...

    def connect(self, client_id: str) -> Producer:
        """A producer ready to send; raises (any exception) when the broker cannot be reached."""
        ...

    def release(self, producer: Producer, timeout: float) -> None:
        """Close ``producer`` without raising; timeout 0 abandons what is unacknowledged."""
        ...


def failure_reason(future: SendFuture) -> str:
    """One line saying why a failed send failed."""
    exc = future.exception
    return one_line(exc) if exc is not None else "send failed"
