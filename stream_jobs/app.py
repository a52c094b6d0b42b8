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
  events) and loaded when a partition is assigned. A Faust Table was not used:
  its changelog partition follows the *current* event, which inside a batch is
  not the run's partition, and writes are refused from timers.
- No Faust windows (they expire on wall-clock time) and no exactly_once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from rankstream.config import Settings
from rankstream.schema import loads
from rankstream.stream_jobs import batch_drain
from rankstream.stream_jobs.core import RulesConfig
from rankstream.stream_jobs.pipeline import Pipeline
from rankstream.stream_jobs.publisher import Publisher

log = logging.getLogger("rankstream.worker")

#: Records per fetch handed to the pipeline (aiokafka max_poll_records).
BATCH_MAX = 2000
TICK_S = 1.0
STATS_EVERY_S = 10.0
#: How long a revocation waits for queued results to be published (Kafka down: give up, the
#: inputs stay uncommitted and the partitions' next owner recomputes them).
REVOKE_FLUSH_S = 5.0
#: Allocations between young-generation collections (CPython's default is 700), see _calm_gc.
GC_GEN0_THRESHOLD = 50_000
#: Faust hard-codes fetch_max_wait_ms=1500 for its consumer. With one fetch in flight per
#: broker, a fetch for idle partitions then blocks the busy partition's next fetch for up
#: to 1.5 s, which capped a 64-rank run at ~3k events/s (profiled: the worker sat idle
#: between batches). 50 ms keeps idle polling cheap and the busy partition flowing.
FETCH_MAX_WAIT_MS = 50
FETCH_MAX_BYTES = 8 * 1024 * 1024

_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _fast_fetch_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _create_worker_consumer(self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by aiokafka when the consumer starts
    return consumer


faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _fast_fetch_worker_consumer


def state_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}.stream-state"


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


@dataclass
class Runtime:
    """Mutable state of one worker process, shared by the batch handler, the timer and the signals."""

    settings: Settings
    pipeline: Pipeline
    saved_state: dict[tuple[int, str], dict] = field(default_factory=dict)
    #: Partitions whose saved detector state has been read since they were assigned.
    state_loaded: set[int] = field(default_factory=set)
    state_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_stats: float = field(default_factory=time.monotonic)


def create_app(settings: Settings, rules: RulesConfig | None = None, *, group_id: str | None = None) -> faust.App:
    """Build the worker's Faust app for ``settings`` (one consumer group per topic prefix)."""
    topics = settings.topics
    (settings.state_path / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
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
    saved: dict[tuple[int, str], dict] = {}  # filled on partition assignment, consumed per run
    pipeline = Pipeline(rules, source_topic=topics.events, state_lookup=lambda p, run_id: saved.pop((p, run_id), None))
    runtime = Runtime(settings, pipeline, saved_state=saved)
    app.rankstream = runtime  # type: ignore[attr-defined]

    async def send(topic: str, key: bytes | None, value: bytes, partition: int | None) -> Any:
        return await app.producer.send(topic, key, value, partition=partition, timestamp=None, headers=None)

    def ack(partition: int, offsets: Any) -> None:
        batch_drain.ack_offsets(app.consumer, TP(topics.events, partition), offsets)

    publisher = Publisher(topics, state_topic(settings), send, ack, is_assigned=runtime.state_loaded.__contains__)

    async def on_batch(tp: Any, records: list[Any]) -> None:
        if tp.partition not in runtime.state_loaded:
            # Faust may resume fetching before the assignment signal below ran to its end
            await _load_saved_state(runtime, [tp.partition])
        await publisher.submit(runtime.pipeline.process(records))

    batch_drain.install(app, batch_drain.BatchRoute(topics.events, on_batch))

    @app.task
    async def publish_results() -> None:
        await publisher.run()

    @app.timer(TICK_S)
    async def wall_clock_fallback() -> None:
        await publisher.submit(runtime.pipeline.advance())
        now = time.monotonic()
        if now - runtime.last_stats >= STATS_EVERY_S:
            runtime.last_stats = now
            s = runtime.pipeline.stats
            log.warning(
                "rankstream worker: events=%d steps=%d alerts=%d invalid=%d held=%d produced=%d send_retries=%d "
                "publishing=%d",
                s["events"],
                s["steps"],
                s["alerts"],
                s["invalid"],
                runtime.pipeline.held_count(),
                publisher.stats.produced,
                publisher.stats.send_retries,
                publisher.pending(),
            )

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: faust.App, revoked: set[Any], **_: Any) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic == topics.events}
        try:  # what is computed goes out before the partitions' next owner reads their state
            await asyncio.wait_for(publisher.join(), timeout=REVOKE_FLUSH_S)
        except TimeoutError:
            log.warning("rankstream worker: %d results still unpublished at revocation", publisher.pending())
        runtime.pipeline.revoke(partitions)
        runtime.state_loaded -= partitions
        for key in [k for k in runtime.saved_state if k[0] in partitions]:
            del runtime.saved_state[key]

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: faust.App, assigned: set[Any], **_: Any) -> None:
        partitions = sorted(tp.partition for tp in assigned if tp.topic == topics.events)
        if partitions:
            await _load_saved_state(runtime, partitions)
        _calm_gc()

    return app


async def _load_saved_state(runtime: Runtime, partitions: list[int]) -> None:
    """Read the saved detector state of ``partitions`` once per assignment, before their first batch."""
    async with runtime.state_lock:
        todo = [p for p in partitions if p not in runtime.state_loaded]
        if not todo:
            return
        loaded = await load_state(runtime.settings, todo)
        runtime.saved_state.update(loaded)
        runtime.state_loaded.update(todo)
    log.warning("rankstream worker: assigned partitions %s, detector state of %d runs", todo, len(loaded))


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


async def load_state(settings: Settings, partitions: list[int]) -> dict[tuple[int, str], dict]:
    """Read the compacted state topic's partitions to their end: the latest state per run."""
    topic = state_topic(settings)
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **settings.aiokafka_kwargs())
    await consumer.start()
    states: dict[tuple[int, str], dict] = {}
    try:
        # ensure_state_topic gave the state topic the events topic's partition count
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.key is not None and record.value is not None:
                        states[(tp.partition, record.key.decode())] = loads(record.value)
                    if record.offset + 1 >= end[tp]:
                        remaining.discard(tp)
            if not batch:
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return states


def ensure_state_topic(settings: Settings) -> None:
    """Create the compacted state topic with as many partitions as the events topic."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from rankstream.stack import wait_for_topics

    admin = KafkaAdminClient(client_id="rankstream-worker", request_timeout_ms=15000, **settings.kafka_python_kwargs())
    try:
        existing = wait_for_topics(admin, [settings.topics.events], timeout_s=10.0)
        if state_topic(settings) in existing:
            return
        if settings.topics.events not in existing:
            raise RuntimeError(f"topic {settings.topics.events} does not exist: run `rankstream topics create`")
        described = admin.describe_topics([settings.topics.events])
        partitions = len(described[0]["partitions"])
        try:
            admin.create_topics(
                [
                    NewTopic(
                        state_topic(settings),
                        num_partitions=partitions,
                        replication_factor=min(3, len(admin.describe_cluster()["brokers"])),
                        topic_configs={"cleanup.policy": "compact", "segment.ms": "600000"},
                    )
                ]
            )
        except TopicAlreadyExistsError:
            pass
    finally:
        admin.close()


__all__ = ["create_app", "ensure_state_topic", "load_state", "state_topic"]
