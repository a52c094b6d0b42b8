"""Worker memory over many runs: flat, because everything kept per run goes when the run is evicted.

One real `rankstream worker` subprocess consumes `--runs` short runs (`--steps` steps x `--ranks`
ranks, each ending with run_end) pushed in waves of `--wave` runs. After each wave the bench waits
until the worker evicted every run so far, counted as tombstones on the detector-state topic (an
evicted run's state gets one), then reads the worker's RSS (psutil). Waves keep the number of live
runs the same all along, so what grows between the first wave and the last is what the worker
keeps per run after eviction. A short alignment grace (`--grace-s`, rules file) lets an ended run be
evicted seconds after its last event instead of 30 s.

Defaults: 10,000 runs x 20 steps x 8 ranks (~1.9M events), a few minutes on two busy cores, bound by
the bench's own producer; `--steps 50` (4.3M events) took 11 minutes.

Uses its own broker (port 19492, state in .rankstream/bench-mem), so it can run beside the
test broker and the other benchmarks' (19392).

Prints one JSON line: {"bench":"worker_memory","rss_mb_1k":..,"rss_mb_10k":..,"ratio":rss_10k/rss_1k,
"runs_first":..,"runs_total":..,"events":..,"seconds":..,"committed_all":..}; target ratio <= 1.2.
`rss_mb_1k` is read after the first wave (`--wave`, 1,000 by default), `rss_mb_10k` after `--runs`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer  # noqa: E402

from rankstream.config import Settings  # noqa: E402
from rankstream.dev.stack import broker_status, start_broker, stop_broker  # noqa: E402
from rankstream.dev.synthetic import generate_run  # noqa: E402
from rankstream.kafka_admin import ensure_topics  # noqa: E402
from rankstream.schema import dumps  # noqa: E402
from rankstream.stream_jobs.detector_state import state_topic  # noqa: E402
from tests.integration.streamkit import WorkerProcess, committed_offsets  # noqa: E402

BENCH_PORT = 19492
#: How long one wave may take to be consumed and evicted before the bench gives up.
WAVE_TIMEOUT_S = 600.0


class Tombstones:
    """Counts the distinct runs with a tombstone on the state topic, from a thread of its own."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._runs: set[bytes] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        consumer = KafkaConsumer(
            state_topic(self._settings), auto_offset_reset="earliest", **self._settings.kafka_python_kwargs()
        )
        while not self._stop.is_set():
            for batch in consumer.poll(timeout_ms=200).values():
                evicted = [r.key for r in batch if r.value is None and r.key is not None]
                with self._lock:
                    self._runs.update(evicted)
        consumer.close()

    def count(self) -> int:
        with self._lock:
            return len(self._runs)

    def wait_for(self, at_least: int, timeout_s: float, worker: WorkerProcess) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count() < at_least:
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                raise SystemExit(f"{self.count()} runs evicted, expected {at_least}; worker log:\n{worker.log()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


#: Stands for the run_id in the template's encoded events (and in its run_name: every run has its own).
RUN_ID_MARK = b"RUN-ID-MARK"


def _template(steps: int, ranks: int) -> list[dict]:
    """One run's events (run_start .. run_end); each run of the bench is a copy under its own run_id."""
    run_id = RUN_ID_MARK.decode()
    return generate_run(run_id, world_size=ranks, steps=steps, seed=1, step_time_s=0.2, heartbeat_every_s=5.0)


def _produce_wave(producer: KafkaProducer, topic: str, template: list[dict], run_ids: list[str]) -> int:
    """Every run of the wave, run after run (encoded once per wave: the producer is the bench's bottleneck)."""
    shift = time.time() - template[-1]["ts"]  # stamped as if each run had just ended
    encoded = [dumps({**event, "ts": event["ts"] + shift}) for event in template]
    for run_id in run_ids:
        key = run_id.encode()
        for value in encoded:
            producer.send(topic, key=key, value=value.replace(RUN_ID_MARK, key))
    producer.flush(300)
    return len(encoded) * len(run_ids)


def _rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs in all")
    parser.add_argument("--wave", type=int, default=1_000, help="runs per wave; RSS is read after the first")
    parser.add_argument("--steps", type=int, default=20, help="steps per run (50: ~11 min on 2 busy cores)")
    parser.add_argument("--ranks", type=int, default=8, help="ranks per run")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--grace-s", type=float, default=2.0, help="alignment grace_min_s of the worker")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rankstream-bench-mem-"))
    base = Settings(
        state_dir=str(ROOT / ".rankstream" / "bench-mem"),
        kafka_port=BENCH_PORT,
        bootstrap_servers=f"127.0.0.1:{BENCH_PORT}",
    )
    started = not broker_status(base).ready
    start_broker(base)
    try:
        settings = base.with_overrides(topic_prefix=f"mem{uuid.uuid4().hex[:8]}", partitions=args.partitions)
        ensure_topics(settings)
        rules = tmp / "rules.yaml"
        rules.write_text(f"alignment: {{grace_min_s: {args.grace_s}}}\n")
        worker = WorkerProcess(settings.with_overrides(state_dir=str(tmp / "w")), tmp / "worker.log", rules=rules)
        tombstones: Tombstones | None = None
        try:
            process = psutil.Process(worker.proc.pid)
            template = _template(args.steps, args.ranks)
            producer = KafkaProducer(linger_ms=20, batch_size=512 * 1024, **settings.kafka_python_kwargs())
            run_ids = [f"mem-run-{i:06d}" for i in range(args.runs)]
            events = 0
            rss: list[float] = []
            began = time.monotonic()
            for first in range(0, args.runs, args.wave):
                wave = run_ids[first : first + args.wave]
                events += _produce_wave(producer, settings.topics.events, template, wave)
                if tombstones is None:  # the state topic exists once the worker is up
                    tombstones = Tombstones(settings)
                tombstones.wait_for(first + len(wave), WAVE_TIMEOUT_S, worker)
                rss.append(_rss_mb(process))
                print(f"{first + len(wave)} runs evicted: rss {rss[-1]:.1f} MB", file=sys.stderr)
            seconds = time.monotonic() - began
            producer.close()
            committed = committed_offsets(settings, f"{settings.topic_prefix}-stream", settings.topics.events)
        finally:
            if tombstones is not None:
                tombstones.stop()
            worker.stop()
    finally:
        if started:
            stop_broker(base)
    print(
        json.dumps(
            {
                "bench": "worker_memory",
                "rss_mb_1k": round(rss[0], 1),
                "rss_mb_10k": round(rss[-1], 1),
                "ratio": round(rss[-1] / rss[0], 3),
                "runs_first": min(args.wave, args.runs),
                "runs_total": args.runs,
                "steps": args.steps,
                "ranks": args.ranks,
                "events": events,
                "seconds": round(seconds, 1),
                "committed_all": committed == events,
                "rss_mb_per_wave": [round(r, 1) for r in rss],
            }
        )
    )


if __name__ == "__main__":
    main()
