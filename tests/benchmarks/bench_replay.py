"""Benchmark: replay of a generated 64-rank run (>= 500k events) vs a json.loads-only floor.

Both loops read the same JSONL file in the same process. The last line printed is
``{"bench": "replay", ..., "baseline": "json_loads_floor", "ratio": our_s / floor_s}``.
Run: ``.venv/bin/python tests/benchmarks/bench_replay.py [--steps N] [--profile]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from rankstream.cli.replay import replay_lines
from rankstream.dev.synthetic import Fault, generate_run
from rankstream.schema import dumps
from rankstream.stream_jobs.core import Engine

WORLD_SIZE = 64


def write_run(path: Path, steps: int) -> int:
    faults = [Fault("straggler", steps // 3, rank=7, duration=50), Fault("loss_spike", steps // 2)]
    events = generate_run(
        "bench-run", WORLD_SIZE, steps, faults=faults, seed=1, heartbeat_every_s=5.0, incarnations=True
    )
    with path.open("wb") as fh:
        fh.write(b"".join(dumps(ev) + b"\n" for ev in events))
    return len(events)


def floor_pass(path: Path) -> float:
    loads = json.loads
    t0 = time.perf_counter()
    with path.open("rb") as fh:
        for line in fh:
            loads(line)
    return time.perf_counter() - t0


def our_pass(path: Path) -> tuple[float, int, int, int]:
    engine = Engine()
    n_steps = 0
    n_alerts = 0

    def on_output(steps: list[dict], alerts: list[dict]) -> None:
        nonlocal n_steps, n_alerts
        n_steps += len(steps)
        n_alerts += len(alerts)

    def on_error(message: str) -> None:
        raise AssertionError(message)

    t0 = time.perf_counter()
    with path.open("rb") as fh:
        accepted = replay_lines(fh, engine, on_output, on_error)
    out = engine.finish()
    on_output(out.steps, out.alerts)
    return time.perf_counter() - t0, accepted, n_steps, n_alerts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=7600, help="steps of the 64-rank run")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (best of)")
    parser.add_argument("--profile", action="store_true", help="cProfile our pass and print the top entries")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        t0 = time.perf_counter()
        n_events = write_run(path, args.steps)
        gen_s = time.perf_counter() - t0
        print(f"generated {n_events} events ({os.path.getsize(path) / 1e6:.0f} MB) in {gen_s:.1f} s", file=sys.stderr)
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            our_pass(path)
            prof.disable()
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        floor_s = []
        ours_s = []
        for _ in range(args.repeat):
            gc.collect()
            floor_s.append(floor_pass(path))
            gc.collect()
            seconds, accepted, n_steps, n_alerts = our_pass(path)
            ours_s.append(seconds)
        floor = min(floor_s)
        ours = min(ours_s)
    print(
        json.dumps(
            {
                "bench": "replay",
                "events": accepted,
                "world_size": WORLD_SIZE,
                "steps": n_steps,
                "alerts": n_alerts,
                "seconds": round(ours, 3),
                "events_per_s": round(accepted / ours),
                "baseline": "json_loads_floor",
                "baseline_seconds": round(floor, 3),
                "baseline_events_per_s": round(n_events / floor),
                "ratio": round(ours / floor, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
