"""When the sink flushes: a caught-up batch that is at least half full goes out at once, a trickle waits.

``--batch-seconds`` is 600 here, so within the test only a full batch, a
caught-up half-full batch or the SIGTERM flush can make rows visible.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from rankstream.config import Settings
from tests.integration.sinks.support import (
    RANKSTREAM,
    SinkProcess,
    count,
    expected_counts,
    generate_run,
    http_client,
    produce_events,
    stored_counts,
    wait_until,
)

pytestmark = pytest.mark.kafka


def test_caught_up_batch_is_flushed_without_waiting_for_the_timer(kafka: Settings, tmp_path: Path) -> None:
    backlog = generate_run("catch-up", 4, 100, team="vision")
    rows = sum(expected_counts(backlog).values())
    batch_rows = rows * 3 // 2  # the backlog fills two thirds of one batch: more than half, never full
    produce_events(kafka, backlog)
    store = tmp_path / "store"
    args = ("--http-port", "0", "--batch-rows", str(batch_rows), "--batch-seconds", "600")
    sink = SinkProcess(kafka, f"chdb://{store}", tmp_path / "sink.log", *args).start()
    try:
        host, port = sink.wait_ready(store)
        client = http_client(host, port)
        want = expected_counts(backlog)
        wait_until(lambda: stored_counts(client) == want, "the backlog, long before the 600 s timer", 60)
        trickle = generate_run("trickle", 1, 3, team="vision", t0=1.7502e9)  # far less than half a batch
        produce_events(kafka, trickle)
        time.sleep(3)
        assert count(client, "events") == len(backlog)  # still waiting for more rows or the timer
        client.close()
        assert sink.stop() == 0  # SIGTERM flushes the trickle
    finally:
        sink.stop()
    out = subprocess.run(
        [RANKSTREAM, "sql", "SELECT count() AS n FROM rankstream.events FINAL", "--dsn", f"chdb://{store}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[2].strip() == str(len(backlog) + len(trickle))
