"""The sink's /metrics: rows stored, batches, insert latency and consumer lag, read by Prometheus' own parser."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rankstream.config import Settings
from tests.integration.sinks.support import SinkProcess, expected_counts, generate_run, produce_events, wait_until

pytestmark = pytest.mark.kafka


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_sinks_metrics_count_what_it_stored(kafka: Settings, tmp_path: Path) -> None:
    events = generate_run("m-run", 4, 40, team="vision")
    produce_events(kafka, events)
    exp = expected_counts(events)
    store = tmp_path / "store"
    sink = SinkProcess(kafka, f"chdb://{store}", tmp_path / "sink.log", "--http-port", "0", "--metrics-port", "0")
    sink.start()
    try:
        sink.wait_ready(store)
        found = wait_until(
            lambda: re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", sink.log()), "metrics URL"
        )
        port = int(found.group(1))
        rows = exp["events"] + exp["metrics"]  # raw events and their per-metric rows, plus the run's runs rows

        def stored() -> dict | None:
            samples = _samples(port)
            return samples if samples.get(("rankstream_sink_rows_written_total", ()), 0) > rows else None

        samples = wait_until(stored, f"more than {rows} rows on /metrics", timeout_s=90)
    finally:
        assert sink.stop() == 0, sink.log()[-3000:]
    assert samples[("rankstream_sink_messages_total", ())] == len(events)
    assert samples[("rankstream_sink_batches_total", ())] >= 1
    assert (
        samples[("rankstream_sink_insert_latency_seconds_count", ())] == samples[("rankstream_sink_batches_total", ())]
    )
    lags = {labels: v for (name, labels), v in samples.items() if name == "rankstream_sink_consumer_lag"}
    assert lags and all(v >= 0 for v in lags.values())
    assert {dict(labels)["topic"] for labels in lags} == {kafka.topics.events, kafka.topics.steps, kafka.topics.alerts}
