"""When the sink flushes: a caught-up batch that is at least half full goes out at once, a trickle waits.

``batch_seconds`` is 600 here, so within the test only a full batch, a
caught-up half-full batch or the shutdown flush can make rows visible. The
worker runs in this process (the store is a server of its own, so this process
opens no chDB) and the test waits on its counters, not on the clock.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.sinks.worker import SinkWorker
from tests.integration.sinks.support import (
    count,
    expected_counts,
    free_port,
    generate_run,
    http_client,
    produce_events,
    server_dsn,
    start_store,
    stored_counts,
    wait_until,
)

pytestmark = pytest.mark.kafka


def test_caught_up_batch_is_flushed_without_waiting_for_the_timer(kafka: Settings, tmp_path: Path) -> None:
    backlog = generate_run("catch-up", 4, 100, team="vision")
    rows = sum(expected_counts(backlog).values())
    batch_rows = rows * 3 // 2  # the backlog fills two thirds of one batch: more than half, never full
    produce_events(kafka, backlog)
    port = free_port()
    server = start_store(tmp_path / "server-store", port, tmp_path / "store.log")
    settings = kafka.with_overrides(store_dsn=server_dsn(port))
    worker = SinkWorker(settings, batch_rows=batch_rows, batch_seconds=600)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    try:
        client = wait_until(lambda: http_client("127.0.0.1", port), "the store server", 60)
        thread.start()
        want = expected_counts(backlog)
        wait_until(lambda: stored_counts(client) == want, "the backlog, long before the 600 s timer", 60)
        assert worker.stats.batches == 1
        trickle = generate_run("trickle", 1, 3, team="vision", t0=1.7502e9)  # far less than half a batch
        produce_events(kafka, trickle)
        wait_until(lambda: worker.stats.messages == len(backlog) + len(trickle), "the sink to read the trickle", 60)
        polls = worker.stats.polls
        wait_until(lambda: worker.stats.polls >= polls + 2, "a full round of the consumer loop after it")
        # Caught up, but the trickle is far less than half a batch: it waits for more rows or the timer.
        assert worker.buffered_rows == sum(expected_counts(trickle).values())
        assert worker.stats.batches == 1 and count(client, "events") == len(backlog)
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive()
        # The shutdown flush stores the trickle.
        assert stored_counts(client) == expected_counts(backlog + trickle)
        assert worker.stats.batches == 2
        client.close()
    finally:
        stop.set()
        if thread.ident is not None:
            thread.join(timeout=60)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
