"""Stream job throughput and alert latency against a plain consumer floor, same run, same broker.

1. Loads a 64-rank run (~N events) into a fresh events topic.
2. Floor: a plain aiokafka consumer that only reads and json-decodes every message.
3. Ours: one `rankstream worker` subprocess over the same topic; throughput is events
   divided by the span between its first and last aligned step on `.steps`
   (broker append times), so process start-up and group join are not counted.
4. Latency: a paced producer sends a live 64-rank run at ~5k events/s with
   injected anomalies; latency = arrival on `.alerts` - produce time of the event
   that completed the trigger step.
5. Gap release (a separate phase, so the hold does not distort the figures above): a
   fresh worker, then `--gap-runs` live 8-rank runs paced on the wall clock (`ts` = wall
   time), each with ONE step event of a random rank dropped mid-run (a lost seq: the
   steps after it are held until the gap is given up, at most one grace period). For
   every step from the dropped one to grace / step time after it, latency = broker
   append time of the step's first publication on `.steps` - the moment its last event
   (every rank's but the dropped one) was produced, i.e. how much later than with no
   loss the step came out. `gap_release_latency_p99_s` is the p99 over those steps of
   all runs; target: `gap_grace_s` (the alignment grace, 30 s by default) + 1 s or less.
   The 0.5 s step time keeps `max_steps_ahead` (100 steps = 50 s) from releasing the
   held steps before the grace does; `gap_steps_measured` should be
   runs x (grace / step time + 1) = 488 (fewer: some held steps never came out).

Prints one JSON line: {"bench":"stream","events_per_s":..,"baseline":"consumer_decode_floor",
"baseline_events_per_s":..,"ratio":..,"alert_latency_p50_s":..,"alert_latency_p99_s":..,
"gap_grace_s":..,"gap_steps_measured":..,"gap_release_latency_p50_s":..,"gap_release_latency_p99_s":..,
"gap_release_latency_max_s":..}
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kafka import KafkaConsumer, KafkaProducer  # noqa: E402

from rankstream.config import Settings  # noqa: E402
from rankstream.dev.stack import broker_status, start_broker, stop_broker  # noqa: E402
from rankstream.dev.synthetic import Fault, generate_run  # noqa: E402
from rankstream.kafka_admin import ensure_topics  # noqa: E402
from rankstream.schema import dumps  # noqa: E402
from rankstream.stream_jobs.core.params import AlignmentParams  # noqa: E402
from tests.integration.streamkit import WorkerProcess  # noqa: E402

BENCH_PORT = 19392


def _settings(base: Settings, partitions: int) -> Settings:
    s = base.with_overrides(topic_prefix=f"bench{uuid.uuid4().hex[:8]}", partitions=partitions)
    ensure_topics(s)
    return s


def _produce_all(settings: Settings, events: list[dict]) -> None:
    producer = KafkaProducer(linger_ms=20, batch_size=512 * 1024, **settings.kafka_python_kwargs())
    for e in events:
        producer.send(settings.topics.events, key=e["run_id"].encode(), value=dumps(e))
    producer.flush(120)
    producer.close()


def _floor(settings: Settings, total: int) -> float:
    from aiokafka import AIOKafkaConsumer

    async def run() -> float:
        consumer = AIOKafkaConsumer(
            settings.topics.events,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_poll_records=5000,
            **settings.aiokafka_kwargs(),
        )
        await consumer.start()
        seen, first = 0, 0.0
        try:
            while seen < total:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    if not first:
                        first = time.perf_counter()
                    for r in records:
                        json.loads(r.value)
                    seen += len(records)
        finally:
            await consumer.stop()
        return seen / (time.perf_counter() - first)

    return asyncio.run(run())


def _steps_span(settings: Settings, expected_steps: int, timeout_s: float) -> tuple[int, float]:
    consumer = KafkaConsumer(settings.topics.steps, auto_offset_reset="earliest", **settings.kafka_python_kwargs())
    stamps: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(stamps) < expected_steps and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            stamps.extend(r.timestamp for r in batch)
    consumer.close()
    if len(stamps) < 2:
        return len(stamps), float("nan")
    return len(stamps), (max(stamps) - min(stamps)) / 1000.0


def _latency(base: Settings, tmp: Path, rate: float, seconds: float) -> list[float]:
    settings = _settings(base, 3)
    ranks = 64
    step_time = ranks / rate
    steps = int(seconds / step_time)
    faults = [Fault("loss_spike", step=s) for s in range(60, steps, 90)] + [
        Fault("nan_loss", step=s) for s in range(105, steps, 90)
    ]
    worker = WorkerProcess(settings, tmp / "latency-worker.log")
    time.sleep(8)  # group join
    events = generate_run(
        "lat-run", world_size=ranks, steps=steps, faults=faults, seed=5, start_ts=0.0, step_time_s=step_time
    )
    start = time.time() + 1.0  # after generating, so the paced producer starts on schedule
    for e in events:
        e["ts"] += start
    completed_at: dict[int, float] = {}
    arrivals: dict[str, tuple[float, int]] = {}
    stop = threading.Event()

    def consume() -> None:
        consumer = KafkaConsumer(settings.topics.alerts, auto_offset_reset="earliest", **settings.kafka_python_kwargs())
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=200).values():
                now = time.time()
                for r in batch:
                    alert = json.loads(r.value)
                    arrivals.setdefault(alert["alert_id"], (now, alert["step"]))
        consumer.close()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    producer = KafkaProducer(linger_ms=2, **settings.kafka_python_kwargs())
    for e in events:
        delay = e["ts"] - time.time()
        if delay > 0:
            time.sleep(delay)
        producer.send(settings.topics.events, key=e["run_id"].encode(), value=dumps(e))
        if e["kind"] == "step":
            completed_at[e["step"]] = time.time()
    producer.flush(60)
    time.sleep(5)
    stop.set()
    reader.join(10)
    worker.stop()
    return [t - completed_at[step] for t, step in arrivals.values() if step in completed_at]


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _gap_release(base: Settings, tmp: Path, runs: int, step_time: float) -> tuple[float, list[float]]:
    """Release latency of the steps held behind one lost event per run (see the module docstring)."""
    settings = _settings(base, 3)
    ranks = 8
    grace = max(AlignmentParams().grace_min_s, AlignmentParams().grace_steps * step_time)
    held_steps = math.ceil(grace / step_time)
    pre_gap_steps = int(8.0 / step_time)
    steps = pre_gap_steps + runs + held_steps + int(8.0 / step_time)
    worker = WorkerProcess(settings.with_overrides(state_dir=str(tmp / "gw")), tmp / "gap-worker.log")
    time.sleep(8)  # group join
    rng = random.Random(18)
    start = time.time() + 1.0
    measured: dict[tuple[str, int], None] = {}
    streams = []
    for i in range(runs):
        run_id = f"gap-run-{i}"
        events = generate_run(run_id, world_size=ranks, steps=steps, seed=i, start_ts=start, step_time_s=step_time)
        gap_step, gap_rank = pre_gap_steps + i, rng.randrange(ranks)  # staggered: one gap per run
        dropped = [e for e in events if e["kind"] == "step" and e["step"] == gap_step and e["rank"] == gap_rank]
        assert len(dropped) == 1
        events.remove(dropped[0])
        measured.update(dict.fromkeys((run_id, s) for s in range(gap_step, gap_step + held_steps + 1)))
        streams.append(events)
    produced_last: dict[tuple[str, int], float] = {}
    published: dict[tuple[str, int], float] = {}
    stop = threading.Event()

    def consume() -> None:
        consumer = KafkaConsumer(settings.topics.steps, auto_offset_reset="earliest", **settings.kafka_python_kwargs())
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=200).values():
                for r in batch:
                    step = json.loads(r.value)
                    if not step.get("revision"):  # its first publication
                        published.setdefault((step["run_id"], step["step"]), r.timestamp / 1000.0)
        consumer.close()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    producer = KafkaProducer(linger_ms=2, **settings.kafka_python_kwargs())
    for e in heapq.merge(*streams, key=lambda e: e["ts"]):
        delay = e["ts"] - time.time()
        if delay > 0:
            time.sleep(delay)
        producer.send(settings.topics.events, key=e["run_id"].encode(), value=dumps(e))
        if e["kind"] == "step":
            produced_last[(e["run_id"], e["step"])] = time.time()
    producer.flush(60)
    deadline = time.monotonic() + grace + 30
    while not measured.keys() <= published.keys() and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    reader.join(10)
    worker.stop()
    return grace, [published[k] - produced_last[k] for k in measured if k in published]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="steps of the 64-rank throughput run")
    parser.add_argument("--rate", type=float, default=5000.0, help="events/s for the latency phase")
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--gap-runs", type=int, default=8, help="live runs with one dropped event each")
    parser.add_argument("--gap-step-time", type=float, default=0.5, help="step time of the gap runs (s)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rankstream-bench-stream-"))
    base = Settings(
        state_dir=str(ROOT / ".rankstream" / "bench"),
        kafka_port=BENCH_PORT,
        bootstrap_servers=f"127.0.0.1:{BENCH_PORT}",
    )
    started = not broker_status(base).ready
    start_broker(base)
    try:
        settings = _settings(base, 6)
        events = generate_run(
            "tput-run", world_size=64, steps=args.steps, seed=1, faults=[Fault("loss_spike", step=300)]
        )
        step_count = sum(1 for e in events if e["kind"] == "step") // 64
        _produce_all(settings, events)
        floor = _floor(settings, len(events))
        worker = WorkerProcess(settings.with_overrides(state_dir=str(tmp / "w")), tmp / "tput-worker.log")
        got, span = _steps_span(settings, step_count, timeout_s=600)
        worker.stop()
        ours = len(events) / span if span == span and span > 0 else 0.0
        latencies = sorted(_latency(base, tmp, args.rate, args.latency_seconds))
        grace, gap_latencies = _gap_release(base, tmp, args.gap_runs, args.gap_step_time)
        gap_latencies.sort()
    finally:
        if started:
            stop_broker(base)
    p99 = _percentile(latencies, 0.99) if latencies else float("nan")
    print(
        json.dumps(
            {
                "bench": "stream",
                "events": len(events),
                "steps_out": got,
                "events_per_s": round(ours, 1),
                "baseline": "consumer_decode_floor",
                "baseline_events_per_s": round(floor, 1),
                "ratio": round(ours / floor, 3) if floor else None,
                "alerts_measured": len(latencies),
                "alert_latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
                "alert_latency_p99_s": round(p99, 3) if latencies else None,
                "gap_grace_s": grace,
                "gap_steps_measured": len(gap_latencies),
                "gap_release_latency_p50_s": round(statistics.median(gap_latencies), 3) if gap_latencies else None,
                "gap_release_latency_p99_s": round(_percentile(gap_latencies, 0.99), 3) if gap_latencies else None,
                "gap_release_latency_max_s": round(gap_latencies[-1], 3) if gap_latencies else None,
            }
        )
    )


if __name__ == "__main__":
    main()
