"""The sink under failure: SIGKILL mid-batch and restart, and a store that goes away for a while.

Counts stay exact (the documented FINAL queries) and every ``seq`` of every
rank arrives; during an outage consumption pauses (bounded memory), one log
line marks each state change, and the sink recovers by itself.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rankstream.config import Settings
from tests.integration.sinks.support import (
    RANKSTREAM,
    SinkProcess,
    count,
    expected_counts,
    free_port,
    generate_run,
    http_client,
    produce_events,
    read_topic,
    runs_on_partition,
    server_dsn,
    start_store,
    stored_counts,
    wait_until,
)

pytestmark = pytest.mark.kafka


def _assert_complete(client, events: list[dict], *logs: Path) -> None:
    """Every seq of every rank is stored once (FINAL); a failure names the missing seqs and the sinks' warnings."""
    exp = expected_counts(events)
    missing = _missing_seqs(client, events)
    warnings = [line for log in logs for line in log.read_text(errors="replace").splitlines() if "WARNING" in line]
    assert not missing, f"missing seqs {missing}; sink warnings: {warnings[-20:]}"
    assert count(client, "events") == exp["events"]
    assert count(client, "metrics") == exp["metrics"]


def _missing_seqs(client, events: list[dict]) -> dict[tuple[str, int, str], list[tuple[int, int]]]:
    """``(run_id, rank, inc) -> [(first, last), ...]`` seq ranges that were produced but are not in ``events``."""
    stored: dict[tuple[str, int, str], set[int]] = {}
    query = "SELECT run_id, rank, inc, seq FROM rankstream.events FINAL"
    for run_id, rank, inc, seq in client.query(query).result_rows:
        stored.setdefault((run_id, rank, inc), set()).add(seq)
    gaps: dict[tuple[str, int, str], list[tuple[int, int]]] = {}
    for e in events:
        key = (e["run_id"], e["rank"], e.get("inc", ""))
        if e["seq"] in stored.get(key, ()):
            continue
        ranges = gaps.setdefault(key, [])
        if ranges and ranges[-1][1] == e["seq"] - 1:
            ranges[-1] = (ranges[-1][0], e["seq"])
        else:
            ranges.append((e["seq"], e["seq"]))
    return gaps


def test_sigkill_mid_batch_then_restart_keeps_counts_exact(kafka: Settings, tmp_path: Path) -> None:
    events = [e for i in range(4) for e in generate_run(f"crash-{i}", 8, 250, team="vision", t0=1.75e9 + i * 1e4)]
    produce_events(kafka, events)
    store = tmp_path / "store"
    args = ("--http-port", "0", "--batch-rows", "2000", "--batch-seconds", "0.2")
    first = SinkProcess(kafka, f"chdb://{store}", tmp_path / "sink1.log", *args).start()
    host, port = first.wait_ready(store)
    client = http_client(host, port)
    total = expected_counts(events)["metrics"]
    seen = wait_until(lambda: int(client.command("SELECT count() FROM rankstream.metrics")), "first rows", 60, 0.02)
    first.stop(signal.SIGKILL)
    client.close()
    assert 0 < seen < total  # killed part way through
    second = SinkProcess(kafka, f"chdb://{store}", tmp_path / "sink2.log", *args).start()
    host, port = second.wait_ready(store)
    client = http_client(host, port)
    wait_until(lambda: count(client, "metrics") == total, "all rows after restart")
    _assert_complete(client, events, first.log_path, second.log_path)
    client.close()
    assert second.stop() == 0


def test_store_outage_pauses_then_recovers_without_loss(kafka: Settings, tmp_path: Path) -> None:
    port = free_port()
    store_path = tmp_path / "server-store"
    server = start_store(store_path, port, tmp_path / "store.log")
    sink = None
    try:
        client = wait_until(lambda: http_client("127.0.0.1", port), "the store server", 60)
        batch_rows = 1000
        sink = SinkProcess(
            kafka, server_dsn(port), tmp_path / "sink.log", "--batch-rows", str(batch_rows),
            "--batch-seconds", "0.2",
        ).start()  # fmt: skip
        before = generate_run("outage-a", 4, 100, team="nlp")
        produce_events(kafka, before)
        wait_until(lambda: stored_counts(client) == expected_counts(before), "rows before the outage")
        client.close()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        after = generate_run("outage-b", 4, 300, team="nlp", t0=1.7501e9)
        produce_events(kafka, after)
        sink.wait_log("unavailable")
        assert sink.proc is not None and sink.proc.poll() is None  # still running, waiting
        server = start_store(store_path, port, tmp_path / "store.log")
        client = wait_until(lambda: http_client("127.0.0.1", port), "the store server again", 60)
        wait_until(lambda: stored_counts(client) == expected_counts(before + after), "all rows after the outage")
        _assert_complete(client, before + after)
        client.close()
        assert sink.stop() == 0
        log = sink.log()
        assert len(re.findall(r"WARNING sink: store \(insert\) unavailable", log)) == 1, log[-3000:]
        assert len(re.findall(r"store \(insert\) available again", log)) == 1, log[-3000:]
        buffered = int(re.search(r"at most (\d+) rows buffered", log).group(1))
        assert buffered < batch_rows + 10  # one batch plus one message, not the backlog
    finally:
        if sink is not None:
            sink.stop()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def _held(log: str) -> tuple[int, int, int]:
    """(rows buffered, rows held with the batch being inserted, messages left in Kafka) from a sink's last line."""
    match = re.search(r"at most (\d+) rows buffered .*?: (\d+) rows held at most\), (\d+) message\(s\) left", log)
    assert match, log[-3000:]
    buffered, held, rewound = map(int, match.groups())
    return buffered, held, rewound


def test_store_outage_spanning_a_rebalance_keeps_the_buffer_within_two_batches(kafka: Settings, tmp_path: Path) -> None:
    """Two sinks of one group; the store goes down, one sink dies, the other takes over every partition
    (unpaused by the rebalance) while still waiting for the store: it must not read the backlog into memory."""
    port = free_port()
    store_path = tmp_path / "server-store"
    server = start_store(store_path, port, tmp_path / "store.log")
    dsn, batch_rows = server_dsn(port), 1000
    args = ("--batch-rows", str(batch_rows), "--batch-seconds", "0.2")
    survivor = SinkProcess(kafka, dsn, tmp_path / "a.log", *args).start()
    victim = SinkProcess(kafka, dsn, tmp_path / "b.log", *args)
    try:
        client = wait_until(lambda: http_client("127.0.0.1", port), "the store server", 60)
        survivor.wait_log("assigned 9 partition(s)")
        victim.start().wait_log("assigned")
        wait_until(lambda: re.search(r"assigned [1-9]\d* partition", victim.log()), "the victim's partitions")
        before = [e for i in range(3) for e in generate_run(f"span-{i}", 2, 20, team="nlp", t0=1.75e9 + i * 1e4)]
        produce_events(kafka, before)
        wait_until(lambda: stored_counts(client) == expected_counts(before), "rows before the outage")
        client.close()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        # A backlog of many batches on every partition, for both sinks.
        backlog = [run_id for p in range(3) for run_id in runs_on_partition("backlog", p, n=3)]
        after = [e for i, r in enumerate(backlog) for e in generate_run(r, 4, 150, team="nlp", t0=1.7501e9 + i * 1e4)]
        produce_events(kafka, after)
        survivor.wait_log("unavailable")
        victim.wait_log("unavailable")
        victim.stop(signal.SIGKILL)
        # The group gives the dead sink's partitions to the survivor (session timeout), unpaused, while it
        # keeps waiting for the store.
        survivor.wait_log("9 partition(s) assigned while waiting for the store", timeout_s=90)
        assert survivor.proc is not None and survivor.proc.poll() is None
        server = start_store(store_path, port, tmp_path / "store.log")
        client = wait_until(lambda: http_client("127.0.0.1", port), "the store server again", 60)
        wait_until(lambda: stored_counts(client) == expected_counts(before + after), "all rows after the outage", 120)
        _assert_complete(client, before + after, survivor.log_path, victim.log_path)
        client.close()
        assert survivor.stop() == 0
        log = survivor.log()
        buffered, held, _ = _held(log)
        assert buffered < batch_rows + 10 and held < 2 * (batch_rows + 10), log[-3000:]
        assert "rewound to their committed offsets" in log  # the batch dropped on the rebalance was read again
    finally:
        for sink in (survivor, victim):
            if sink.proc is not None:
                sink.stop(signal.SIGKILL)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def _sink_refusing_quarantined_hosts(kafka: Settings, tmp_path: Path) -> tuple[SinkProcess, Any]:
    """A sink on a fresh store whose ``events`` table refuses rows from host 'quarantined' (a team's constraint)."""
    store = tmp_path / "store"
    sink = SinkProcess(kafka, f"chdb://{store}", tmp_path / "sink.log", "--http-port", "0", "--batch-seconds", "0.2")
    host, port = sink.start().wait_ready(store)
    client = http_client(host, port)
    client.command("ALTER TABLE rankstream.events ADD CONSTRAINT no_quarantined_host CHECK host != 'quarantined'")
    return sink, client


def _quarantine(events: list[dict], steps: tuple[int, ...]) -> list[dict]:
    """Move the step events of ``steps`` to host 'quarantined'; returns them."""
    moved = [e for e in events if e["kind"] == "step" and e["step"] in steps]
    for e in moved:
        e["host"] = "quarantined"
    return moved


def test_rows_the_store_refuses_go_to_the_dlq_and_the_rest_is_stored(kafka: Settings, tmp_path: Path) -> None:
    """A refusal that no retry can fix (a team's CHECK constraint) must not stall the sink or cost other rows."""
    sink, client = _sink_refusing_quarantined_hosts(kafka, tmp_path)
    events = generate_run("refused-a", 4, 200, team="nlp")
    refused = {(e["rank"], e["seq"]) for e in _quarantine(events, (17, 18, 150))}
    produce_events(kafka, events)
    later = generate_run("refused-b", 4, 50, team="nlp", t0=1.7502e9)  # after the refusal: the sink goes on
    produce_events(kafka, later)
    stored = [e for e in events if (e["rank"], e["seq"]) not in refused] + later
    wait_until(lambda: stored_counts(client) == expected_counts(stored), "every row but the refused ones")
    dead = read_topic(kafka, kafka.topics.dlq, expected=len(refused))
    letters = [json.loads(r.value) for r in dead]
    assert len(letters) == len(refused) == 12
    originals = [json.loads(d["original"].encode("latin-1")) for d in letters]
    assert {(o["rank"], o["seq"]) for o in originals} == refused
    assert all(d["reason"].startswith("the store refused the rows: Constraint `no_quarantined_host`") for d in letters)
    assert all(d["source_topic"] == kafka.topics.events and d["offset"] >= 0 for d in letters)
    gone = _missing_seqs(client, events + later)
    assert {run for run, _, _ in gone} == {"refused-a"}
    assert {
        (rank, seq) for (_, rank, _), spans in gone.items() for lo, hi in spans for seq in range(lo, hi + 1)
    } == refused
    # (the wait above: a refused event's metric rows are not stored either)
    client.close()
    assert sink.stop() == 0
    log = sink.log()
    assert "the store refused" in log and "unavailable" not in log, log[-3000:]
    assert f"{len(refused)} refused by the store" in log


def test_refused_rows_are_stored_once_the_cause_is_fixed_and_they_are_redriven(kafka: Settings, tmp_path: Path) -> None:
    """The way back from the DLQ: drop the constraint, ``rankstream dlq --redrive``, and every seq is stored."""
    sink, client = _sink_refusing_quarantined_hosts(kafka, tmp_path)
    events = generate_run("redrive", 2, 50, team="nlp")
    quarantined = _quarantine(events, (5, 6))
    produce_events(kafka, events)
    wait_until(
        lambda: len(read_topic(kafka, kafka.topics.dlq, expected=len(quarantined), timeout_s=2)) == len(quarantined),
        "DLQ",
    )
    client.command("ALTER TABLE rankstream.events DROP CONSTRAINT no_quarantined_host")
    redriven = subprocess.run(
        [RANKSTREAM, "dlq", "--redrive", "--bootstrap", kafka.bootstrap_servers, "--prefix", kafka.topic_prefix],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert redriven.returncode == 0 and f"re-sent {len(quarantined)} message(s)" in redriven.stdout, (
        redriven.stdout + redriven.stderr
    )
    wait_until(lambda: stored_counts(client) == expected_counts(events), "every row after the redrive")
    assert _missing_seqs(client, events) == {}
    client.close()
    assert sink.stop() == 0
