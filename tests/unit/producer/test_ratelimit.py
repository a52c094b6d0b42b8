"""The rate limit keeps the same steps on every rank: a power-of-two stride decided at shared step numbers."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.producer import Reporter
from rankstream.producer.ratelimit import DECIDE_EVERY_EVENTS, StepStride, stride_for
from rankstream.schema import decode_event
from tests.unit.producer.test_sender import FakeTransport

LIMIT = 50.0
# (steps per second, steps): the issue's 100 steps/s at 50 events/s, a fast phase, a slow one, a middle one.
PHASES = [(100.0, 3000), (1000.0, 20000), (3.0, 300), (400.0, 6000)]


class JitteredClock:
    """One rank's view of the step ends: the shared schedule plus its own offset and per-step jitter."""

    def __init__(self, schedule: list[float], seed: int, jitter_s: float) -> None:
        rng = random.Random(seed)
        offset = rng.uniform(-1000.0, 1000.0)  # monotonic clocks of different hosts share no origin
        self.times = [t + offset + rng.gauss(0.0, jitter_s) for t in schedule]
        self.step = 0

    def __call__(self) -> float:
        return self.times[self.step]


def _schedule() -> tuple[list[float], list[tuple[int, int, float]]]:
    """Step end times of all phases and each phase's (first step, end step, steps per second)."""
    times, phases, t, step = [], [], 0.0, 0
    for rate, steps in PHASES:
        phases.append((step, step + steps, rate))
        for _ in range(steps):
            t += 1.0 / rate
            times.append(t)
        step += steps
    return times, phases


def _kept(schedule: list[float], seed: int, jitter_s: float, every_k: int = 1) -> list[int]:
    clock = JitteredClock(schedule, seed, jitter_s)
    stride = StepStride(LIMIT, every_k, clock=clock)
    kept = []
    for step in range(len(schedule)):
        if step % every_k:
            continue
        clock.step = step
        if stride.keep(step):
            kept.append(step)
    return kept


@pytest.mark.parametrize("jitter_ms", [0.5, 2.0])
def test_four_ranks_with_jittered_timing_keep_exactly_the_same_steps(jitter_ms: float) -> None:
    schedule, phases = _schedule()
    ranks = [_kept(schedule, seed, jitter_ms / 1000.0) for seed in range(4)]
    assert ranks[1] == ranks[0] and ranks[2] == ranks[0] and ranks[3] == ranks[0]
    kept = set(ranks[0])
    for first, end, rate in phases:
        settled = first + (end - first) // 2  # the second half of a phase: the stride has adapted
        events = sum(1 for s in range(settled, end) if s in kept)
        events_per_s = events / ((end - settled) / rate)
        low = min(rate, LIMIT / math.sqrt(2)) * 0.9  # a job slower than the limit keeps every step
        assert low <= events_per_s <= LIMIT * math.sqrt(2) * 1.1, (rate, events_per_s)


def test_the_issue_case_keeps_every_other_step_on_all_ranks() -> None:
    """4 ranks at 100 steps/s, 50 events/s: a token bucket per rank kept 96 of 300 aligned steps."""
    schedule = [(s + 1) / 100.0 for s in range(300 + DECIDE_EVERY_EVENTS)]
    ranks = [_kept(schedule, seed, 0.002) for seed in range(4)]
    assert all(r == ranks[0] for r in ranks)
    after_warmup = [s for s in ranks[0] if s >= DECIDE_EVERY_EVENTS]
    assert after_warmup == list(range(DECIDE_EVERY_EVENTS, 300 + DECIDE_EVERY_EVENTS, 2))


def test_every_k_thins_first_and_the_stride_counts_reported_steps() -> None:
    schedule = [(s + 1) / 1000.0 for s in range(40000)]
    kept = _kept(schedule, 0, 0.0, every_k=5)
    late = [s for s in kept if s >= 20000]
    # 1000 steps/s, every 5th: 200 per second, 4x the limit -> every 4th reported step, i.e. every 20th step.
    assert late == list(range(20000, 40000, 20))


def test_a_step_number_going_back_restarts_the_window_and_keeps_the_stride() -> None:
    now = [0.0]
    stride = StepStride(LIMIT, clock=lambda: now[0])
    for step in range(4000):
        now[0] = step / 400.0
        stride.keep(step)
    assert stride.stride == 8
    now[0] += 30.0  # a checkpoint reload
    assert stride.keep(1000) and not stride.keep(1001)  # same stride, absolute phase
    assert stride.stride == 8


@pytest.mark.parametrize(
    ("steps_per_s", "limit", "expected"),
    [
        (100, 50, 2),
        (50, 50, 1),
        (70, 50, 1),
        (71, 50, 2),
        (1000, 50, 16),
        (10, 50, 1),
        (5, 0, 1),
        (math.inf, 50, 1 << 20),
    ],
)
def test_stride_is_the_nearest_power_of_two(steps_per_s: float, limit: float, expected: int) -> None:
    assert stride_for(steps_per_s, limit) == expected


def test_four_reporters_deliver_the_same_steps(tmp_path: Path) -> None:
    """End to end through Reporter.log and the sender: the steps on the (fake) broker are the same for every rank."""
    transport = FakeTransport()
    settings = Settings(bootstrap_servers="fake:9092", state_dir=str(tmp_path / "state"), topic_prefix="unit")
    schedule = [(s + 1) / 300.0 for s in range(3000)]  # 300 steps/s against the default 50/s
    reporters, clocks = [], []
    for rank in range(4):
        r = Reporter("same-steps", settings=settings, rank=rank, world_size=4, heartbeat_s=0, transport=transport)
        clock = JitteredClock(schedule, seed=rank, jitter_s=0.002)
        assert r._stride is not None
        r._stride.clock = clock
        reporters.append(r)
        clocks.append(clock)
    for step in range(len(schedule)):
        for r, clock in zip(reporters, clocks, strict=True):
            clock.step = step
            r.log(step, loss=1.0)
    for r in reporters:
        r.close(timeout=2)
    by_rank: dict[int, list[int]] = {rank: [] for rank in range(4)}
    for _, _, value in transport.acked:
        event = decode_event(value)
        if event["kind"] == "step":
            by_rank[event["rank"]].append(event["step"])
    assert by_rank[0] and all(sorted(steps) == sorted(by_rank[0]) for steps in by_rank.values())
    assert all(r.stats["rate_stride"] == 8 for r in reporters)  # 300/50 = 6: nearest power of two 8
    assert len(by_rank[0]) == DECIDE_EVERY_EVENTS + len(range(DECIDE_EVERY_EVENTS, 3000, 8))
