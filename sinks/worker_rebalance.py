"""Rebalance hook of the sink's consumer: flush before partitions go away, else drop the batch.

kafka-python rebalances eagerly: every partition is revoked and the positions
of the new assignment start from the committed offsets, so a batch that cannot
be flushed in time is simply dropped and read again, never lost.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kafka import ConsumerRebalanceListener

if TYPE_CHECKING:
    from rankstream.sinks.worker import SinkWorker

log = logging.getLogger("rankstream.sink")


class RevokeListener(ConsumerRebalanceListener):
    def __init__(self, worker: SinkWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            self.worker.flush_once()

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("sink: assigned %d partition(s)", len(assigned))
