"""The Faust app: a thin shell that feeds ``<prefix>.events`` to the pipeline and
publishes aligned steps, alerts and dead letters, acking input only afterwards.

Design choices (see docs/stream.md):
- Each fetched partition batch goes to the pipeline in one call
  (:mod:`.batch_drain`, replacing Faust's per-message dispatch for this topic)
  and offsets are acked only after the outputs they fed are acknowledged by
  Kafka: Faust commits the highest contiguous acked offset, so holding a
  message until its step is produced keeps the committed offset behind every
  pending step.
- Detector state that spans long windows is persisted once per batch per run to
  a compacted topic ``<prefix>.stream-state`` (same partition as the run's
  events, :mod:`.detector_state`) and loaded when a partition is assigned. A
  Faust Table was not used: its changelog partition follows the *current*
  event, which inside a batch is not the run's partition, and writes are
  refused from timers.
- No Faust windows (they expire on wall-clock time) and no exactly_once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import TYPE_CHECKING, Any, cast

import faust
from faust.types import TP

from rankstream.config import Settings
from rankstream.stream_jobs import batch_drain, faust_patches
from rankstream.stream_jobs.core import RulesConfig
from rankstream.stream_jobs.detector_state import SavedStates, load_state, state_topic
from rankstream.stream_jobs.pipeline import PartitionedPipeline, Result
from rankstream.stream_jobs.publisher import Publisher
from rankstream.stream_jobs.runner import WORKER_LOGGER

if TYPE_CHECKING:
    from rankstream.stream_jobs.prom import WorkerMetrics

log = logging.getLogger(WORKER_LOGGER)

#: Records per fetch handed to the pipeline (aiokafka max_poll_records).
BATCH_MAX = 2000
TICK_S = 1.0
STATS_EVERY_S = 10.0
#: How long a revocation waits for queued results to be published (Kafka down: give up, the
#: inputs stay uncommitted and the partitions' next owner recomputes them).
REVOKE_FLUSH_S = 5.0
#: Allocations between young-generation collections (CPython's default is 700), see _calm_gc.
GC_GEN0_THRESHOLD = 50_000
FETCH_MAX_BYTES = 8 * 1024 * 1024


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """Kafka security settings from the shared config, in Faust's terms."""
    context = settings.ssl_context()
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            ssl_context=context,
            mechanism=settings.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def faust_app(settings: Settings, group_id: str | None = None) -> faust.App:
    """A Faust app configured for the worker (one consumer group per topic prefix), with no agents yet."""
    (settings.state_path / "faust").mkdir(parents=True, exist_ok=True)
    return faust.App(
        group_id or f"{settings.topic_prefix}-stream",
        broker=[f"kafka://{host}" for host in settings.bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(settings),
        datadir=str(settings.state_path / "faust"),
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=BATCH_MAX,
        consumer_max_fetch_size=FETCH_MAX_BYTES,
        broker_commit_interval=1.0,
        producer_linger=0.005,
        producer_max_batch_size=512 * 1024,
        producer_acks=-1,
        # Held (unacked) messages belong to pending steps: on shutdown they stay
        # uncommitted and the next owner re-reads them, so do not wait for them.
        stream_wait_empty=False,
        key_serializer="raw",
        value_serializer="raw",
    )


class StreamJob:
    """One worker process: the Faust app, the pipeline, the publisher, and the handlers Faust calls.

    Building one applies :mod:`.faust_patches` (once per process) and registers
    with ``app``: the batch route of the events topic, the publisher task, the
    wall-clock timer and the rebalance signals.
    """

    def __init__(self, settings: Settings, rules: RulesConfig | None = None, *, group_id: str | None = None) -> None:
        faust_patches.apply()
        self.settings = settings
        self.app = faust_app(settings, group_id)
        #: Saved detector state per (partition, run_id): filled on assignment, consumed per run, given up
        #: (a tombstone) when no event asked for it within the longest run retention.
        self._saved_state = SavedStates(_longest_retention_s(rules or RulesConfig()))
        #: Partitions whose saved detector state has been read since they were assigned.
        self._state_loaded: set[int] = set()
        self._state_lock = asyncio.Lock()
        self._last_stats = time.monotonic()
        self.metrics: WorkerMetrics | None = None  # serve_metrics() sets it
        self.pipeline = PartitionedPipeline(
            rules, source_topic=settings.topics.events, state_lookup=self._saved_state.take, team=settings.team
        )
        self.publisher = Publisher(
            settings.topics, state_topic(settings), self._send, self._ack_offsets, self._state_loaded.__contains__
        )
        batch_drain.register_route(self.app, batch_drain.BatchRoute(settings.topics.events, self.on_batch))
        self.app.task(self.publish_results)
        self.app.timer(TICK_S)(self.wall_clock_fallback)
        # (mode types signal handlers as taking *args; these take the one positional argument Faust sends)
        self.app.on_partitions_revoked.connect(cast(Any, self.on_revoked))
        self.app.on_partitions_assigned.connect(cast(Any, self.on_assigned))

    # ------------------------------------------------------------ what Faust calls

    async def on_batch(self, tp: TP, records: list[Any]) -> None:
        """A fetched batch of one events partition: process it, queue its results for publishing."""
        if tp.partition not in self._state_loaded:
            # Faust may resume fetching before the assignment signal below ran to its end
            await self._load_saved_state([tp.partition])
        await self.publisher.submit(self._observed(self.pipeline.process(records)))

    async def publish_results(self) -> None:
        await self.publisher.run()

    async def wall_clock_fallback(self) -> None:
        result = self.pipeline.advance()
        result.evicted |= self._saved_state.expired()
        await self.publisher.submit(self._observed(result))
        if self.metrics is not None:
            self.metrics.board.expire(time.time())
            self.metrics.health.lag = self._consumer_lag()
        now = time.monotonic()
        if now - self._last_stats >= STATS_EVERY_S:
            self._last_stats = now
            self._log_stats()

    async def on_revoked(self, sender: faust.App, revoked: set[TP], **_: Any) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic == self.settings.topics.events}
        try:  # what is computed goes out before the partitions' next owner reads their state
            await asyncio.wait_for(self.publisher.join(), timeout=REVOKE_FLUSH_S)
        except TimeoutError:
            log.warning("rankstream worker: %d results still unpublished at revocation", self.publisher.pending())
        self.pipeline.revoke(partitions)
        self._state_loaded -= partitions
        self._saved_state.forget(partitions)

    async def on_assigned(self, sender: faust.App, assigned: set[TP], **_: Any) -> None:
        partitions = sorted(tp.partition for tp in assigned if tp.topic == self.settings.topics.events)
        if partitions:
            await self._load_saved_state(partitions)
        _calm_gc()

    # ------------------------------------------------------------------ metrics

    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve Prometheus ``/metrics`` (docs/metrics.md) on ``host:port``; returns the port."""
        from rankstream.stream_jobs.prom import WorkerMetrics, worker_health
        from rankstream.stream_jobs.run_board import RunBoard

        self.metrics = WorkerMetrics(RunBoard(), worker_health(self.pipeline, self.publisher))
        self.publisher.on_published = self.metrics.publish_latency.observe
        return self.metrics.serve(port, host)

    def _observed(self, result: Result) -> Result:
        if self.metrics is not None:
            self.metrics.board.observe(result.steps, result.alerts, time.time(), self.pipeline.run_labels)
        return result

    def _consumer_lag(self) -> dict[int, int]:
        """Per events partition: messages past the committed offset (what a restart would re-read)."""
        consumer = self.app.consumer
        committed_offsets = getattr(consumer, "_committed_offset", {})  # Faust keeps no public accessor
        lag: dict[int, int] = {}
        for tp in consumer.assignment():
            if tp.topic == self.settings.topics.events:
                committed = committed_offsets.get(tp)
                lag[tp.partition] = max(consumer.highwater(tp) - (committed or 0), 0)
        return lag

    # ------------------------------------------------------------------ helpers

    async def _send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None) -> Any:
        return await self.app.producer.send(topic, key, value, partition=partition, timestamp=None, headers=None)

    def _ack_offsets(self, partition: int, offsets: Any) -> None:
        batch_drain.ack_offsets(self.app.consumer, TP(self.settings.topics.events, partition), offsets)

    async def _load_saved_state(self, partitions: list[int]) -> None:
        """Read the saved detector state of ``partitions`` once per assignment, before their first batch."""
        async with self._state_lock:
            todo = [p for p in partitions if p not in self._state_loaded]
            if not todo:
                return
            loaded = await load_state(self.settings, todo)
            self._saved_state.add(todo, loaded)
            self._state_loaded.update(todo)
        log.info("rankstream worker: assigned partitions %s, detector state of %d runs", todo, len(loaded))

    def _log_stats(self) -> None:
        s = self.pipeline.stats
        log.info(
            "rankstream worker: events=%d steps=%d alerts=%d invalid=%d held=%d produced=%d send_retries=%d "
            "dead_lettered_outputs=%d publishing=%d",
            s["events"],
            s["steps"],
            s["alerts"],
            s["invalid"],
            self.pipeline.held_count(),
            self.publisher.stats.produced,
            self.publisher.stats.send_retries,
            self.publisher.stats.dead_lettered,
            self.publisher.pending(),
        )


def _longest_retention_s(rules: RulesConfig) -> float:
    """The longest a run may stay silent before the engine evicts it, over the defaults and every override."""
    overridden = [ov.alignment["retention_s"] for ov in rules.overrides if "retention_s" in ov.alignment]
    return max([rules.alignment.retention_s, *overridden])


def _calm_gc() -> None:
    """Keep CPython's cyclic GC from rescanning the worker's long-lived objects.

    With the default thresholds (700, 10, 10) a worker decoding 40k events/s ran
    a young collection every few hundred events and a full one (over every Faust,
    aiokafka and detector object) every few seconds: py-spy charged it to
    whichever line allocated, mostly JSON decoding. Objects alive once start-up
    and assignment are done are frozen (never scanned again) and young
    collections run every 50k allocations.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


def create_app(settings: Settings, rules: RulesConfig | None = None, *, group_id: str | None = None) -> StreamJob:
    """Build the worker for ``settings``; run ``StreamJob.app`` with :class:`.runner.StreamWorkerRunner`."""
    return StreamJob(settings, rules, group_id=group_id)


__all__ = ["StreamJob", "broker_credentials", "create_app", "faust_app"]
