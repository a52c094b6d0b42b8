"""``rankstream spool flush``: deliver every orphaned spool, each run's ranks merged by event time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rankstream.config import Settings
from rankstream.errors import one_line
from rankstream.producer.kafka_io import DeliveryError, close_producer, deliver, make_producer
from rankstream.producer.merge import SpoolMerge, orphan_runs
from rankstream.producer.spool import SpoolError

DELIVERY_TIMEOUT_S = 30.0


def flush_spool(
    spool_dir: str | Path,
    settings: Settings,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Deliver every orphaned spool under ``spool_dir`` to ``settings``' events topic.

    The ranks of a run are delivered as one stream ordered by ``ts``
    (:class:`~rankstream.producer.merge.SpoolMerge`), runs one after another.
    ``progress(delivered_so_far, total)`` is called after each acknowledged
    batch. Directories locked by a live reporter are skipped (it delivers them
    itself). Returns the number of events Kafka acknowledged. Raises
    :class:`SpoolError` with a one-line reason when Kafka cannot be reached.
    """
    merges = [SpoolMerge(spools) for spools in orphan_runs(spool_dir)]
    try:
        total = sum(m.pending for m in merges)
        if total == 0:
            return 0
        try:
            producer = make_producer(settings, client_id="rankstream-spool-flush")
        except Exception as exc:
            raise SpoolError(f"cannot reach Kafka at {settings.bootstrap_servers}: {one_line(exc)}") from None
        delivered = 0
        try:
            for merge in merges:
                while (batch := merge.next_batch()) is not None:
                    deliver(producer, settings.topics.events, batch, DELIVERY_TIMEOUT_S)
                    merge.commit()
                    delivered += len(batch)
                    if progress is not None:
                        progress(delivered, total)
        except DeliveryError as exc:
            raise SpoolError(f"Kafka stopped acknowledging after {delivered} events: {exc}") from None
        finally:
            close_producer(producer, timeout=5.0)
        return delivered
    finally:
        for merge in merges:
            merge.close()
