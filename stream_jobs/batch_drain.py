"""Bulk delivery of one topic's fetched records to a batch handler, inside Faust's consumer.

Why: Faust dispatches every fetched record on its own (``Consumer._drain_messages``
awaits ``wait_first(callback(message), suspend_flow.wait())``: four tasks per
message, then a conductor lock, a channel queue and a stream hop). py-spy put
about 60% of the worker's busy time there, capping a 64-rank run at ~11k
events/s against a 90k/s plain-consumer floor. The detection pipeline works on
batches anyway, so for the events topics (one, or a shared worker's one per
team) the drain hands each fetched per-partition record list to one handler
call instead.

What stays Faust's: group membership and rebalances, the fetch thread, flow
control (a batch is abandoned when the consumer suspends for a rebalance, as
Faust abandons a message), read-offset and gap bookkeeping, and offset commits
of the highest contiguous *acked* offset. The handler gets aiokafka's records
as fetched (no per-record Faust ``Message``, no per-record sensor call) and acks
offsets in bulk with :func:`ack_offsets`, which does what ``Consumer.ack`` does
for a message, once per batch. Other topics keep Faust's per-message path.

This reaches into ``faust.transport.consumer.Consumer`` internals
(``_read_offset``, ``_acked``, ``_acked_index``, ``_committed_offset``,
``_add_gap``): faust-streaming is pinned to 0.15.x and
tests/integration/stream_jobs/test_worker.py (crash, restart, rebalance, no gap)
guards them. This module patches nothing: :func:`register_route` records an
app's route, :func:`subscribe` adds a topic to the app's subscription (also
while it runs: Faust's conductor resubscribes and a rebalance follows), and
:mod:`.faust_patches` makes Faust's consumer call :func:`drain_batches` for
apps that have a route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast
from weakref import WeakKeyDictionary

from faust.transport.consumer import Consumer
from faust.types import TP, ConsumerT
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

#: Receives a partition and aiokafka ``ConsumerRecord`` objects of it, in offset order.
BatchHandler = Callable[[TP, list[Any]], Awaitable[None]]


@dataclass(frozen=True)
class BatchRoute:
    """Records of every topic ``accepts`` go to ``handler`` a fetched partition batch at a time.

    ``accepts`` is asked once per partition batch (a set's ``__contains__``: topics may be added while the
    app runs)."""

    accepts: Callable[[str], bool]
    handler: BatchHandler


_routes: WeakKeyDictionary[Any, BatchRoute] = WeakKeyDictionary()


def register_route(app: Any, route: BatchRoute) -> None:
    """Have ``app``'s consumer drain through :func:`drain_batches` (subscribe to topics with :func:`subscribe`).

    Takes effect once :func:`.faust_patches.apply` has run; other apps keep Faust's drain.
    """
    _routes[app] = route


def subscribe(app: Any, topic: str) -> None:
    """Add ``topic`` (raw bytes) to ``app``'s subscription; a running app resubscribes (then rebalances)."""
    app.topics.add(app.topic(topic, key_serializer="raw", value_serializer="raw"))


def resubscribe_missing(app: Any, topics: Iterable[str]) -> list[str]:
    """Ask ``app``'s conductor again to subscribe to those of ``topics`` it has not subscribed to; returns them.

    Why: Faust's conductor drops a subscription change flagged while the app is rebalancing (its
    ``_subscriber`` clears the flag and waits for the next change), so a topic added during a rebalance
    would never be consumed. Called periodically; does nothing during a rebalance (the next call retries).
    """
    conductor = cast(Any, app.topics)
    missing = [t for t in topics if t not in conductor._topic_name_index]
    if missing and not app.rebalancing:
        conductor._flag_changes()
    return missing


def route_for(app: Any) -> BatchRoute | None:
    """The batch route registered for ``app``, if any."""
    return _routes.get(app)


def ack_offsets(consumer: ConsumerT, tp: TP, offsets: Iterable[int]) -> int:
    """Mark ``offsets`` of ``tp`` acknowledged, as ``Consumer.ack`` does one message at a time.

    Faust's commit loop then commits the highest contiguous acked offset.
    Returns how many offsets were newly acked.
    """
    raw = cast(Any, consumer)
    added = 0
    with ack_lock:
        committed = raw._committed_offset[tp]
        acked_index = raw._acked_index[tp]
        acked = raw._acked[tp]
        for offset in offsets:
            if (committed is None or offset >= committed) and offset not in acked_index:
                acked_index.add(offset)
                acked.append(offset)
                added += 1
        raw._n_acked += added
        notify(raw._waiting_for_ack)
    return added


async def drain_batches(self: Consumer, fetcher: Any, route: BatchRoute) -> None:  # pragma: no cover - needs a broker
    """Faust's drain loop, one await per partition batch instead of per message."""
    consumer_should_stop = cast(Any, self)._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    read_offset = self._read_offset
    to_message = self._to_message
    acks_enabled_for = self.app.topics.acks_enabled_for
    callback = self.callback
    routed = route.accepts
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            records, active = await self._wait_next_records(1.0)
            await self.sleep(0)
            if not records or self.should_stop:
                continue
            generation = self.app.consumer_generation_id
            for tp, batch in records.items():
                if not self.flow_active or self.app.consumer_generation_id != generation:
                    break  # rebalancing: the fetched records are read again after it
                if active is not None and tp not in active and tp not in self._buffered_partitions:
                    continue
                fresh: list[Any] = []
                last = read_offset[tp]
                gaps: list[tuple[int, int]] = []
                for record in batch:
                    offset = record.offset
                    if last is not None and offset < last:
                        continue  # re-fetched after a seek: already delivered
                    if last and offset - last > 1:
                        gaps.append((last + 1, offset))  # compaction or transaction markers
                    fresh.append(record)
                    last = offset
                if not fresh:
                    continue
                if gaps and acks_enabled_for(tp.topic):
                    for start, end in gaps:
                        await self._add_gap(tp, start, end)
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
                if routed(tp.topic):
                    await self.wait_first(route.handler(tp, fresh), self.suspend_flow.wait())
                else:
                    for record in fresh:
                        message = to_message(tp, record)
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                read_offset[tp] = last
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            return
        raise


__all__ = [
    "BatchHandler",
    "BatchRoute",
    "ack_offsets",
    "drain_batches",
    "register_route",
    "resubscribe_missing",
    "route_for",
    "subscribe",
]
