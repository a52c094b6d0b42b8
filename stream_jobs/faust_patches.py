"""Every change the worker makes to Faust and aiokafka classes, applied once by :func:`apply`.

Why patch at all: two things Faust does not let an app configure cost most of
the worker's throughput (docs/stream.md, "Throughput"):

* the consumer's fetch wait, hard-coded to 1.5 s (:data:`FETCH_MAX_WAIT_MS`);
* per-message dispatch of fetched records (``Consumer._drain_messages``),
  replaced for the app's batch route by :func:`.batch_drain.drain_batches`.

Both reach into private code of faust-streaming 0.15 on aiokafka 0.14, so
:func:`apply` refuses other major.minor versions with a :class:`ConfigError`
instead of patching code it was not written for (a silent mismatch could
commit offsets whose results were never published). Importing this module, or
any other of the worker's, patches nothing: :func:`apply` runs when a
:class:`~rankstream.stream_jobs.app.StreamJob` is built, and again is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from rankstream.errors import ConfigError

#: Distribution -> the major.minor the patches were written and tested against (pyproject pins them).
PATCHED_VERSIONS = {"faust-streaming": "0.15", "aiokafka": "0.14"}
#: Faust hard-codes fetch_max_wait_ms=1500 for its consumer. With one fetch in flight per
#: broker, a fetch for idle partitions then blocks the busy partition's next fetch for up
#: to 1.5 s, which capped a 64-rank run at ~3k events/s (profiled: the worker sat idle
#: between batches). 50 ms keeps idle polling cheap and the busy partition flowing.
FETCH_MAX_WAIT_MS = 50

_applied = False


def check_versions(installed: Callable[[str], str] = metadata.version) -> None:
    """Raise :class:`ConfigError` unless every patched distribution has the major.minor of :data:`PATCHED_VERSIONS`."""
    for dist, wanted in PATCHED_VERSIONS.items():
        try:
            version = installed(dist)
        except metadata.PackageNotFoundError:
            raise ConfigError(f"{dist} {wanted}.x is needed by the stream worker but is not installed") from None
        if _major_minor(version) != wanted:
            raise ConfigError(
                f"{dist} {version} is installed but the stream worker's Faust patches "
                f"(rankstream.stream_jobs.faust_patches) were written for {wanted}.x: install {dist}=={wanted}.*"
            )


def apply() -> None:
    """Check the versions, then patch Faust's consumer; idempotent (the first call patches, the others return)."""
    global _applied
    if _applied:
        return
    check_versions()
    _shorten_fetch_wait()
    _route_batches()
    _applied = True


def applied() -> bool:
    """Whether :func:`apply` has patched this process."""
    return _applied


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _shorten_fetch_wait() -> None:
    """Faust's worker consumer waits at most :data:`FETCH_MAX_WAIT_MS` for a fetch to fill."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer

    def create_fast_fetch_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create_worker_consumer(self, transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by aiokafka when the consumer starts
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create_fast_fetch_worker_consumer  # type: ignore[method-assign]


def _route_batches() -> None:
    """Apps with a batch route drain it with :func:`.batch_drain.drain_batches`; other apps keep Faust's loop."""
    from faust.transport.consumer import Consumer

    from rankstream.stream_jobs import batch_drain

    faust_drain = Consumer._drain_messages

    async def drain_messages(self: Consumer, fetcher: Any) -> None:
        route = batch_drain.route_for(self.app)
        if route is None:
            await faust_drain(self, fetcher)
        else:
            await batch_drain.drain_batches(self, fetcher, route)

    Consumer._drain_messages = drain_messages  # type: ignore[method-assign]


__all__ = ["FETCH_MAX_WAIT_MS", "PATCHED_VERSIONS", "applied", "apply", "check_versions"]
