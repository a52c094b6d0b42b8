"""The worker's Prometheus exposition: per-run gauges from the run board, and pipeline health.

Served by prometheus-client's own HTTP server (a daemon thread) on 127.0.0.1 unless
told otherwise; a scrape reads a snapshot and the stats counters, never the engine.
Metric names (all prefixed ``rankstream_``) are listed in docs/metrics.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rankstream.metrics_http import serve_metrics
from rankstream.stream_jobs.lanes import summed_stats
from rankstream.stream_jobs.run_board import RunBoard, RunView

_RUN_LABELS = ["run_id", "run_name", "team"]
#: Publish latency buckets (seconds): a result is normally out in milliseconds; Kafka outages show as the top.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class PipelineHealth:
    """Counters and gauges of the worker, read at scrape time (plain ints: safe to read from another thread)."""

    counters: Callable[[], Mapping[str, int]]
    gauges: Callable[[], Mapping[str, float]]
    #: (events topic, partition) -> messages not yet committed (highwater - committed), refreshed by the
    #: worker's timer.
    lag: dict[tuple[str, int], int] = field(default_factory=dict)


class _WorkerCollector(Collector):
    def __init__(self, board: RunBoard, health: PipelineHealth) -> None:
        self._board = board
        self._health = health

    def collect(self) -> Iterator[Metric]:
        yield from _run_metrics(self._board.snapshot())
        for name, value in sorted(self._health.counters().items()):
            counter = CounterMetricFamily(f"rankstream_worker_{name}", f"worker total of {name.replace('_', ' ')}")
            counter.add_metric([], float(value))
            yield counter
        for name, level in sorted(self._health.gauges().items()):
            gauge = GaugeMetricFamily(f"rankstream_worker_{name}", f"worker {name.replace('_', ' ')} now")
            gauge.add_metric([], float(level))
            yield gauge
        lag = GaugeMetricFamily(
            "rankstream_worker_consumer_lag",
            "events not yet committed, per events topic and partition",
            labels=["topic", "partition"],
        )
        for (topic, partition), behind in sorted(dict(self._health.lag).items()):
            lag.add_metric([topic, str(partition)], float(behind))
        yield lag


def _run_metrics(runs: list[RunView]) -> Iterator[Metric]:
    def gauge(name: str, doc: str, labels: list[str] = _RUN_LABELS) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"rankstream_run_{name}", doc, labels=labels)

    last_step = gauge("last_step", "newest aligned step of the run")
    rate = gauge("steps_per_second", "aligned steps per second of event time (smoothed)")
    loss = gauge("loss", "cross-rank mean loss of the newest step")
    grad = gauge("grad_norm", "cross-rank mean gradient norm of the newest step")
    world = gauge("world_size", "ranks of the run")
    reporting = gauge("ranks_reporting", "ranks in the newest aligned step")
    alive = gauge("ranks_alive", "ranks not named by a firing rank_silent / rank_hung / run_lost alert")
    firing = gauge("alerts_firing", "alerts firing and not resolved", [*_RUN_LABELS, "rule", "severity"])
    straggler = gauge(
        "rank_straggler_score", "a rank's step time over the step's mean (slowest ranks only)", [*_RUN_LABELS, "rank"]
    )
    for run in runs:
        labels = [run.run_id, run.run_name, run.team]
        if run.last_step >= 0:
            last_step.add_metric(labels, float(run.last_step))
            rate.add_metric(labels, run.steps_per_s)
            world.add_metric(labels, float(run.world_size))
            reporting.add_metric(labels, float(run.ranks_reporting))
            alive.add_metric(labels, float(run.ranks_alive()))
        for target, value in ((loss, run.loss_mean), (grad, run.grad_norm)):
            if value is not None:
                target.add_metric(labels, value if math.isfinite(value) else math.nan)
        counts: dict[tuple[str, str], int] = {}
        for rule, severity, _ in run.firing.values():
            counts[(rule, severity)] = counts.get((rule, severity), 0) + 1
        for (rule, severity), n in sorted(counts.items()):
            firing.add_metric([*labels, rule, severity], float(n))
        for rank, score in sorted(run.straggler_score.items()):
            straggler.add_metric([*labels, str(rank)], score)
    yield from (last_step, rate, loss, grad, world, reporting, alive, firing, straggler)


class WorkerMetrics:
    """The worker's registry: the run board, health, and the publish latency histogram."""

    def __init__(self, board: RunBoard, health: PipelineHealth) -> None:
        self.board = board
        self.health = health
        self.registry = CollectorRegistry()
        self.registry.register(_WorkerCollector(board, health))
        self.publish_latency = Histogram(
            "rankstream_worker_publish_latency_seconds",
            "from a batch's results being queued to Kafka acknowledging them",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (port 0: any free one); returns the port."""
        return serve_metrics(self.registry, port, host)


def worker_health(lanes: Callable[[], list[Any]]) -> PipelineHealth:
    """The health numbers of a worker: its lanes' pipelines and publishers added up (``lanes()``: the lanes now,
    :class:`~rankstream.stream_jobs.lanes.Lane`)."""

    def counters() -> dict[str, int]:
        now = lanes()
        s = summed_stats(now, lambda lane: lane.pipeline.stats)
        p = summed_stats(now, lambda lane: vars(lane.publisher.stats))
        return {
            "events": s.get("events", 0),
            "invalid_events": s.get("invalid", 0),
            "steps": s.get("steps", 0),
            "alerts": s.get("alerts", 0),
            "forced_acks": s.get("forced_acks", 0),
            "team_corrected": s.get("team_corrected", 0),
            "produced": p.get("produced", 0),
            "send_retries": p.get("send_retries", 0),
            "dead_lettered_outputs": p.get("dead_lettered", 0),
        }

    def gauges() -> dict[str, float]:
        now = lanes()
        return {
            "held_messages": float(sum(lane.pipeline.held_count() for lane in now)),
            "results_publishing": float(sum(lane.publisher.pending() for lane in now)),
            "lanes": float(len(now)),
        }

    return PipelineHealth(counters, gauges)


__all__ = ["PipelineHealth", "WorkerMetrics", "worker_health"]
