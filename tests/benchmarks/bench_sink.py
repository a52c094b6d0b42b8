"""Benchmark: Kafka topic -> sink -> embedded store, against a direct DataFrame insert of the same rows.

Prints one JSON line: rows/s through the sink (decode, validate, batch,
column-oriented insert, commit) vs ``client.insert_df`` of the same rows into
chDB in the same run (the floor: no Kafka, no decoding), and the median
latency of the cookbook's loss-curve query for one run in a store holding
>= 10M metric rows (generated inside chDB with INSERT ... SELECT FROM numbers()).

Run: ``.venv/bin/python tests/benchmarks/bench_sink.py [--ranks 8 --steps 5000 --query-rows 10000000]``.
Needs Java for the local broker (the benchmark broker on 127.0.0.1:19392, started if not running and
stopped afterwards; it never touches the test broker).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from rankstream.config import Settings  # noqa: E402
from rankstream.dev.stack import broker_status, start_broker, stop_broker  # noqa: E402
from rankstream.kafka_admin import ensure_topics  # noqa: E402
from rankstream.schema import encode_event  # noqa: E402

METRICS = ("loss", "lr", "grad_norm", "step_time_s", "data_time_s", "tokens_per_s")


def _events(run_id: str, ranks: int, steps: int) -> list[dict]:
    out = []
    for rank in range(ranks):
        for step in range(steps):
            metrics = {name: 1.0 / (step + 1) + rank * 0.001 + i for i, name in enumerate(METRICS)}
            out.append(
                {
                    "v": 1, "kind": "step", "run_id": run_id, "rank": rank, "world_size": ranks,
                    "local_rank": rank, "host": "node0", "step": step, "ts": 1.75e9 + step + rank * 1e-3,
                    "seq": step, "metrics": metrics, "tags": {"stage": "train"},
                }
            )  # fmt: skip
    return out


def _produce(settings: Settings, payloads: list[bytes], key: bytes) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(acks=1, linger_ms=20, batch_size=512 * 1024, **settings.kafka_python_kwargs())
    for value in payloads:
        producer.send(settings.topics.events, key=key, value=value)
    producer.flush(timeout=120)
    producer.close()


def _sink_rate(settings: Settings, total_rows: int) -> tuple[float, float]:
    from rankstream.sinks.worker import SinkWorker

    worker = SinkWorker(settings, batch_rows=50_000, batch_seconds=1.0)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    t_first = None
    while worker.stats.rows_written < total_rows:
        if t_first is None and worker.stats.messages:
            t_first = time.perf_counter()
        if not thread.is_alive():
            raise SystemExit("sink worker died")
        time.sleep(0.002)
    elapsed = time.perf_counter() - (t_first or time.perf_counter())
    stop.set()
    thread.join(timeout=60)
    return total_rows / elapsed, elapsed


def _floor_rate(client, events: list[dict], team: str) -> float:
    import pandas as pd

    from rankstream.schema import decode_event
    from rankstream.sinks.records import Batch
    from rankstream.sinks.store.tables import column_names

    batch = Batch()
    for raw in events:
        batch.add_event(decode_event(encode_event(raw)), team)
    frames = {}
    for table in ("events", "metrics"):
        client.command(f"CREATE TABLE floor_{table} AS rankstream.{table}")
        frame = pd.DataFrame(dict(zip(column_names(table), batch.columns[table], strict=True)))
        for col in ("ts",):
            frame[col] = pd.to_datetime(frame[col], unit="us", utc=True)
        frames[table] = frame
    start = time.perf_counter()
    for table, frame in frames.items():
        client.insert_df(f"floor_{table}", frame)
    elapsed = time.perf_counter() - start
    return batch.rows / elapsed


def _query_latency(client, rows: int, sql: str) -> tuple[float, int]:
    per_run = 8 * 500 * 5  # ranks x steps x metrics
    client.command(
        f"""
        INSERT INTO rankstream.metrics (team, run_id, metric, kind, step, rank, seq, ts, value, host, world_size)
        SELECT 'vision', concat('q-', toString(intDiv(number, {per_run}))),
               ['loss','lr','grad_norm','step_time_s','data_time_s'][number % 5 + 1], 'step',
               intDiv(number % {per_run}, 40), intDiv(number % 40, 5), intDiv(number % {per_run}, 40),
               toDateTime64(1750000000 + intDiv(number, 40), 6, 'UTC'), 1.0 / (1 + intDiv(number % {per_run}, 40)),
               'node0', 8
        FROM numbers({rows})
        """
    )
    total = int(client.command("SELECT count() FROM rankstream.metrics"))
    run_id = f"q-{rows // per_run // 2}"
    samples = []
    for _ in range(25):
        start = time.perf_counter()
        result = client.query(sql, parameters={"run_id": run_id})
        samples.append((time.perf_counter() - start) * 1000)
        assert len(result.result_rows) == 500
    return statistics.median(samples[5:]), total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--query-rows", type=int, default=10_000_000)
    parser.add_argument("--port", type=int, default=19392, help="benchmark broker port (shared with bench_stream)")
    args = parser.parse_args()

    broker = Settings(
        state_dir=str(REPO / ".rankstream" / "bench"),
        kafka_port=args.port,
        kafka_controller_port=args.port + 1,
        bootstrap_servers=f"127.0.0.1:{args.port}",
    )
    already = broker_status(broker).ready
    start_broker(broker)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_sink_") as tmp:
            settings = broker.with_overrides(
                topic_prefix=f"bench{uuid.uuid4().hex[:8]}",
                state_dir=tmp,
                partitions=3,
                store_dsn=f"chdb://{tmp}/store",
            )
            ensure_topics(settings)
            events = _events("bench-run", args.ranks, args.steps)
            _produce(settings, [encode_event(e) for e in events], key=b"bench-run")
            # One run -> one partition (keyed by run_id), as in production.
            total_rows = sum(1 + len(e["metrics"]) for e in events)
            sink_rate, sink_s = _sink_rate(settings, total_rows)

            from rankstream.sinks.store import open_store
            from tests.integration.sinks.support import cookbook_queries

            client = open_store(settings.dsn)
            floor = _floor_rate(client, events, "")
            query_ms, stored = _query_latency(client, args.query_rows, cookbook_queries()["loss-curve"])
            client.close()
    finally:
        if not already:
            stop_broker(broker)
    print(
        json.dumps(
            {
                "bench": "sink",
                "rows": total_rows,
                "sink_seconds": round(sink_s, 3),
                "rows_per_s": round(sink_rate),
                "baseline": "chdb_insert_df_floor",
                "baseline_rows_per_s": round(floor),
                "ratio": round(sink_rate / floor, 3),
                "query_store_metric_rows": stored,
                "query_loss_curve_ms": round(query_ms, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
