"""The sink's Prometheus exposition: what it consumed, stored and refused, how far behind it is, insert latency.

Read at scrape time from the worker's counters (plain ints) and from the consumer's
locally cached high watermarks: a scrape never calls the broker or the store. Per-run
gauges come from the stream worker's ``/metrics`` (docs/metrics.md); the sink adds the
store side of the pipeline's health.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rankstream.metrics_http import serve_metrics

#: Insert latency buckets (seconds): a batch is normally stored in tens of milliseconds; outages show at the top.
_INSERT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_COUNTERS = {
    "messages": "messages consumed from the contract topics",
    "batches": "batches stored and committed",
    "rows_written": "rows stored",
    "dlq": "messages dead-lettered (invalid, or refused by the store)",
    "rejected": "messages the store refused for their data",
    "outages": "store or Kafka outages waited out",
    "restamped_runs": "runs whose rows stored without a team got it",
    "team_corrected": "run_start events whose meta claimed another team than their topic's (corrected)",
    "foreign_runs": "messages of a run_id another team owns, sent to their own team's dead-letter topic",
    "dropped_batches": "batches dropped on a rebalance, to be read again",
}


class _SinkCollector(Collector):
    def __init__(self, worker: Any) -> None:
        self._worker = worker

    def collect(self) -> Iterator[Metric]:
        stats = self._worker.stats
        for name, doc in _COUNTERS.items():
            counter = CounterMetricFamily(f"rankstream_sink_{name}", doc)
            counter.add_metric([], float(getattr(stats, name, 0)))
            yield counter
        buffered = GaugeMetricFamily("rankstream_sink_buffered_rows", "rows held in memory, not stored yet")
        buffered.add_metric([], float(self._worker.buffered_rows))
        yield buffered
        lag = GaugeMetricFamily(
            "rankstream_sink_consumer_lag", "messages past the committed offset", labels=["topic", "partition"]
        )
        for (topic, partition), behind in sorted(consumer_lag(self._worker).items()):
            lag.add_metric([topic, str(partition)], float(behind))
        yield lag


def consumer_lag(worker: Any) -> dict[tuple[str, int], int]:
    """(topic, partition) -> high watermark minus committed offset, for the partitions the sink holds."""
    consumer = getattr(worker, "_consumer", None)
    if consumer is None:
        return {}
    committed: dict[Any, int] = dict(getattr(worker.stats, "committed", {}) or {})
    lag: dict[tuple[str, int], int] = {}
    try:
        assigned = list(consumer.assignment())
    except Exception:  # closing or rebalancing: no numbers this scrape
        return {}
    for tp in assigned:
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        done = committed.get(f"{tp.topic}/{tp.partition}", 0)
        lag[(tp.topic, tp.partition)] = max(int(highwater) - int(done or 0), 0)
    return lag


class SinkMetrics:
    """The sink's registry; ``insert_latency`` is observed by the worker for every stored batch."""

    def __init__(self, worker: Any) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_SinkCollector(worker))
        self.insert_latency = Histogram(
            "rankstream_sink_insert_latency_seconds",
            "time to store one batch (all its tables) and commit its offsets",
            buckets=_INSERT_BUCKETS,
            registry=self.registry,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (port 0: any free one); returns the port."""
        return serve_metrics(self.registry, port, host)


__all__ = ["SinkMetrics", "consumer_lag"]
