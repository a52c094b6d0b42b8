"""The Faust app: a thin shell that feeds events topics to the pipeline and
publishes aligned steps, alerts and dead letters, acking input only afterwards.

Design choices (see docs/stream.md):
- One *lane* (:mod:`.lanes`) per events topic: its own pipeline, publisher and
  saved detector states. A per-team or prefix-only worker has one lane
  (``<prefix>.events``); a shared worker (``RANKSTREAM_TEAM=*``) one per team
  events topic ``<prefix>.<team>.events``, found by listing the broker's topics
  (:mod:`.team_watch`), and the team of every record is its topic's.
- Each fetched partition batch goes to its lane's pipeline in one call
  (:mod:`.batch_drain`, replacing Faust's per-message dispatch for these topics)
  and offsets are acked only after the outputs they fed are acknowledged by
  Kafka: Faust commits the highest contiguous acked offset, so holding a
  message until its step is produced keeps the committed offset behind every
  pending step.
- Detector state that spans long windows is persisted once per batch per run to
  the lane's compacted topic ``<lane prefix>.stream-state`` (same partition as
  the run's events, :mod:`.detector_state`) and loaded when a partition is
  assigned. A Faust Table was not used: its changelog partition follows the
  *current* event, which inside a batch is not the run's partition, and writes
  are refused from timers.
- No Faust windows (they expire on wall-clock time) and no exactly_once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import faust
from faust.types import TP

from rankstream.config import Settings
from rankstream.errors import one_line
from rankstream.stream_jobs import batch_drain, faust_patches
from rankstream.stream_jobs.core import RulesConfig
from rankstream.stream_jobs.detector_state import SavedStates, load_state, state_topic_of
from rankstream.stream_jobs.lanes import Lane, partitions_by_lane, summed_stats
from rankstream.stream_jobs.pipeline import PartitionedPipeline, Result
from rankstream.stream_jobs.publisher import Publisher
from rankstream.stream_jobs.runner import WORKER_LOGGER
from rankstream.stream_jobs.team_watch import DISCOVER_EVERY_S, TeamWatch
from rankstream.topics import Topics

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
#: Seconds Faust's conductor waits after a topic is added before it resubscribes (Faust's default, 45 s,
#: coalesces agents starting up; the shared worker adds topics one discovery at a time).
RESUBSCRIBE_AFTER_S = 1.0


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


def default_group(settings: Settings) -> str:
    """The consumer group of a worker: ``<prefix>-stream`` (one team's: ``<prefix>.<team>-stream``), or
    ``<prefix>.teams-stream`` for a shared worker (under ``<prefix>``, where the service principal may use
    groups; a new name, see docs/stream.md)."""
    if settings.all_teams:
        return f"{settings.topic_prefix}.teams-stream"
    return f"{settings.team_prefix}-stream"


def faust_app(settings: Settings, group_id: str | None = None) -> faust.App:
    """A Faust app configured for the worker (one consumer group per topic prefix), with no agents yet."""
    (settings.state_path / "faust").mkdir(parents=True, exist_ok=True)
    return faust.App(
        group_id or default_group(settings),
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
    """One worker process: the Faust app, its lanes, and the handlers Faust calls.

    Building one applies :mod:`.faust_patches` (once per process) and registers
    with ``app``: the batch route of the events topics, the publishers' start,
    the wall-clock timer, the rebalance signals, and for a shared worker the
    discovery timer. A shared worker starts with no lane: call
    :meth:`discover_teams_now` before running it.
    """

    def __init__(
        self,
        settings: Settings,
        rules: RulesConfig | None = None,
        *,
        group_id: str | None = None,
        discover_every_s: float = DISCOVER_EVERY_S,
    ) -> None:
        faust_patches.apply()
        self.settings = settings
        self.app = faust_app(settings, group_id)
        self._rules = rules
        #: A saved state untaken this long after loading is given up (a tombstone): the longest run retention.
        self._state_ttl_s = _longest_retention_s(rules or RulesConfig())
        #: events topic -> its lane; Faust's drain reads it to route batches.
        self.lanes: dict[str, Lane] = {}
        self._publishing = False
        self._last_stats = time.monotonic()
        self.metrics: WorkerMetrics | None = None  # serve_metrics() sets it
        self._watch = TeamWatch(settings) if settings.all_teams else None
        batch_drain.register_route(self.app, batch_drain.BatchRoute(self.lanes.__contains__, self.on_batch))
        if self._watch is None:
            self.add_lane(settings.fixed_team, settings.topics)
        else:
            cast(Any, self.app.topics)._resubscribe_sleep_lock_seconds = RESUBSCRIBE_AFTER_S
            self._discover_every_s = discover_every_s
            self.app.timer(discover_every_s)(self.discover_teams)
        self.app.task(self.start_publishers)
        self.app.timer(TICK_S)(self.wall_clock_fallback)
        # (mode types signal handlers as taking *args; these take the one positional argument Faust sends)
        self.app.on_partitions_revoked.connect(cast(Any, self.on_revoked))
        self.app.on_partitions_assigned.connect(cast(Any, self.on_assigned))

    # ------------------------------------------------------------------ lanes

    def add_lane(self, team: str, topics: Topics) -> Lane:
        """Serve ``topics.events`` (its state topic must exist): runs read there belong to ``team``."""
        saved = SavedStates(self._state_ttl_s)
        loaded: set[int] = set()
        source = topics.events

        def ack(partition: int, offsets: Iterable[int]) -> None:
            batch_drain.ack_offsets(self.app.consumer, TP(source, partition), offsets)

        pipeline = PartitionedPipeline(self._rules, source_topic=source, state_lookup=saved.take, team=team)
        publisher = Publisher(topics, state_topic_of(topics), self._send, ack, loaded.__contains__, team=team)
        lane = self.lanes[source] = Lane(team, topics, pipeline, publisher, saved, loaded)
        batch_drain.subscribe(self.app, source)
        if self.metrics is not None:
            publisher.on_published = self.metrics.publish_latency.observe
        if self._publishing:
            self.app.add_future(publisher.run())
        return lane

    def add_teams(self, found: Mapping[str, Topics]) -> None:
        for team, topics in sorted(found.items()):
            if topics.events not in self.lanes:
                self.add_lane(team, topics)
                log.info("rankstream worker: serving team %s (%s)", team, topics.events)

    def discover_teams_now(self) -> int:
        """List the broker's topics now (blocking) and add a lane per new team; returns how many were added."""
        assert self._watch is not None, "only a shared worker (RANKSTREAM_TEAM=*) discovers teams"
        found = self._watch.new_teams(set(self.lanes))
        self.add_teams(found)
        return len(found)

    async def discover_teams(self) -> None:
        """The discovery timer: new team events topics get a lane; a broker that cannot be asked is asked later."""
        assert self._watch is not None
        # a lane added during a rebalance may have been left out of the subscription: asked again
        batch_drain.resubscribe_missing(self.app, list(self.lanes))
        try:
            found = await asyncio.to_thread(self._watch.new_teams, set(self.lanes))
        except Exception as exc:  # the broker away or refusing: the lanes so far go on
            log.warning(
                "rankstream worker: listing team topics failed (%s); retrying in %.0fs",
                one_line(exc),
                self._discover_every_s,
            )
            return
        self.add_teams(found)

    # ------------------------------------------------------------ what Faust calls

    async def on_batch(self, tp: TP, records: list[Any]) -> None:
        """A fetched batch of one events partition: process it, queue its results for publishing."""
        lane = self.lanes[tp.topic]
        if tp.partition not in lane.loaded:
            # Faust may resume fetching before the assignment signal below ran to its end
            await self._load_saved_state(lane, [tp.partition])
        await lane.publisher.submit(self._observed(lane, lane.pipeline.process(records)))

    async def start_publishers(self) -> None:
        """Start each lane's publisher task (lanes added later start theirs when added)."""
        self._publishing = True
        for lane in self.lanes.values():
            self.app.add_future(lane.publisher.run())

    async def wall_clock_fallback(self) -> None:
        for lane in list(self.lanes.values()):
            result = lane.pipeline.advance()
            result.evicted |= lane.saved.expired()
            await lane.publisher.submit(self._observed(lane, result))
        if self.metrics is not None:
            self.metrics.board.expire(time.time())
            self.metrics.health.lag = self._consumer_lag()
        now = time.monotonic()
        if now - self._last_stats >= STATS_EVERY_S:
            self._last_stats = now
            self._log_stats()

    async def on_revoked(self, sender: faust.App, revoked: set[TP], **_: Any) -> None:
        lanes = list(self.lanes.values())
        try:  # what is computed goes out before the partitions' next owner reads their state
            await asyncio.wait_for(asyncio.gather(*(lane.publisher.join() for lane in lanes)), timeout=REVOKE_FLUSH_S)
        except TimeoutError:
            pending = sum(lane.publisher.pending() for lane in lanes)
            log.warning("rankstream worker: %d results still unpublished at revocation", pending)
        for topic, partitions in partitions_by_lane(self.lanes, revoked).items():
            self.lanes[topic].revoke(partitions)

    async def on_assigned(self, sender: faust.App, assigned: set[TP], **_: Any) -> None:
        by_lane = partitions_by_lane(self.lanes, assigned)
        if by_lane:
            await asyncio.gather(*(self._load_saved_state(self.lanes[t], sorted(p)) for t, p in by_lane.items()))
        _calm_gc()

    # ------------------------------------------------------------------ metrics

    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve Prometheus ``/metrics`` (docs/metrics.md) on ``host:port``; returns the port."""
        from rankstream.stream_jobs.prom import WorkerMetrics, worker_health
        from rankstream.stream_jobs.run_board import RunBoard

        self.metrics = WorkerMetrics(RunBoard(), worker_health(lambda: list(self.lanes.values())))
        for lane in self.lanes.values():
            lane.publisher.on_published = self.metrics.publish_latency.observe
        return self.metrics.serve(port, host)

    def _observed(self, lane: Lane, result: Result) -> Result:
        if self.metrics is not None:
            board = self.metrics.board
            board.observe(result.steps, result.alerts, time.time(), lane.pipeline.run_labels, team=lane.team)
        return result

    def _consumer_lag(self) -> dict[tuple[str, int], int]:
        """Per events topic and partition: messages past the committed offset (what a restart would re-read)."""
        consumer = self.app.consumer
        committed_offsets = getattr(consumer, "_committed_offset", {})  # Faust keeps no public accessor
        lag: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            if tp.topic in self.lanes:
                committed = committed_offsets.get(tp)
                lag[(tp.topic, tp.partition)] = max(consumer.highwater(tp) - (committed or 0), 0)
        return lag

    # ------------------------------------------------------------------ helpers

    async def _send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None) -> Any:
        return await self.app.producer.send(topic, key, value, partition=partition, timestamp=None, headers=None)

    async def _load_saved_state(self, lane: Lane, partitions: list[int]) -> None:
        """Read the saved detector state of a lane's ``partitions`` once per assignment, before their first batch."""
        async with lane.lock:
            todo = [p for p in partitions if p not in lane.loaded]
            if not todo:
                return
            loaded = await load_state(self.settings, todo, topic=lane.state_topic)
            lane.saved.add(todo, loaded)
            lane.loaded.update(todo)
        where = f" of {lane.source}" if lane.team else ""
        log.info("rankstream worker: assigned partitions %s%s, detector state of %d runs", todo, where, len(loaded))

    def _log_stats(self) -> None:
        lanes = list(self.lanes.values())
        s = summed_stats(lanes, lambda lane: lane.pipeline.stats)
        p = summed_stats(lanes, lambda lane: lane.publisher.stats.__dict__)
        log.info(
            "rankstream worker: events=%d steps=%d alerts=%d invalid=%d held=%d produced=%d send_retries=%d "
            "dead_lettered_outputs=%d publishing=%d team_corrected=%d lanes=%d",
            s.get("events", 0),
            s.get("steps", 0),
            s.get("alerts", 0),
            s.get("invalid", 0),
            sum(lane.pipeline.held_count() for lane in lanes),
            p.get("produced", 0),
            p.get("send_retries", 0),
            p.get("dead_lettered", 0),
            sum(lane.publisher.pending() for lane in lanes),
            s.get("team_corrected", 0),
            len(lanes),
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


def create_app(
    settings: Settings,
    rules: RulesConfig | None = None,
    *,
    group_id: str | None = None,
    discover_every_s: float = DISCOVER_EVERY_S,
) -> StreamJob:
    """Build the worker for ``settings``; run ``StreamJob.app`` with :class:`.runner.StreamWorkerRunner`
    (a shared worker, ``settings.all_teams``: after :meth:`StreamJob.discover_teams_now` found a team)."""
    return StreamJob(settings, rules, group_id=group_id, discover_every_s=discover_every_s)


__all__ = ["StreamJob", "broker_credentials", "create_app", "default_group", "faust_app"]
