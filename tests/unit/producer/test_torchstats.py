"""mem_peak_mb is the peak of each reported interval: a transient spike is reported once, then the number recovers."""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path

import pytest

import rankstream.producer.torchstats as torchstats
from rankstream.config import Settings
from rankstream.producer import Reporter
from rankstream.producer.torchstats import IntervalPeak, cuda_memory
from rankstream.schema import decode_event
from tests.unit.producer.test_sender import FakeTransport, wait_until

GB = 1024.0  # MB


class FakeCuda:
    """The caching allocator's host-side counters, as torch.cuda exposes them (bytes)."""

    def __init__(self) -> None:
        self.allocated = 0
        self.peak = 0
        self.resets: list[str] = []

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def current_device(self) -> int:
        return 0

    def get_device_properties(self, index: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(total_memory=80 * 2**30)

    def memory_allocated(self, index: int) -> int:
        return self.allocated

    def memory_reserved(self, index: int) -> int:
        return self.peak

    def max_memory_allocated(self, index: int) -> int:
        return self.peak

    def reset_peak_memory_stats(self, index: int) -> None:
        self.resets.append(threading.current_thread().name)
        self.peak = self.allocated

    def step(self, transient_gb: float, after_gb: float) -> None:
        """One training step: memory rises to ``transient_gb`` and falls back to ``after_gb``."""
        self.peak = max(self.peak, int(transient_gb * 2**30))
        self.allocated = int(after_gb * 2**30)


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    fake = FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=fake))
    monkeypatch.setattr(torchstats, "_total_mb_cache", {})
    return fake


def _reported_peaks(tmp_path: Path, cuda: FakeCuda, steps: list[tuple[float, float]], every_k: int = 1) -> list:
    transport = FakeTransport()
    settings = Settings(bootstrap_servers="fake:9092", state_dir=str(tmp_path / "state"), topic_prefix="unit")
    r = Reporter("mem", settings=settings, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0,
                 every_k=every_k, transport=transport)  # fmt: skip
    for step, (transient, after) in enumerate(steps, start=1):
        cuda.step(transient, after)
        r.log(step, cuda_memory())  # what the framework callbacks do at each step end
        expected = 1 + step // every_k  # run_start + the reported steps
        wait_until(lambda n=expected: len(transport.acked) >= n, "the sender to read this step")
    r.close(timeout=1)
    events = [decode_event(v) for _, _, v in transport.acked]
    return [(e["step"], e["metrics"]["mem_peak_mb"] / GB) for e in events if e["kind"] == "step"]


def test_a_transient_peak_is_reported_once_and_the_number_recovers(tmp_path: Path, cuda: FakeCuda) -> None:
    peaks = _reported_peaks(tmp_path, cuda, [(20, 10), (76, 10), (21, 10), (20, 10)])
    assert peaks == [(1, 20), (2, 76), (3, 21), (4, 20)]  # a process-lifetime peak would stay at 76
    assert cuda.resets and set(cuda.resets) == {"rankstream-sender"}  # never a torch call on the training thread


def test_a_peak_in_a_thinned_out_step_counts_toward_the_next_reported_step(tmp_path: Path, cuda: FakeCuda) -> None:
    peaks = _reported_peaks(tmp_path, cuda, [(20, 10), (20, 10), (76, 10), (21, 10), (20, 10), (20, 10)], every_k=2)
    assert peaks == [(2, 20), (4, 76), (6, 20)]


def test_the_interval_peak_is_never_below_the_memory_in_use_at_the_step(cuda: FakeCuda) -> None:
    cuda.step(30, 30)
    value = cuda_memory()["mem_peak_mb"]
    assert isinstance(value, IntervalPeak)
    cuda.reset_peak_memory_stats(0)
    cuda.allocated = cuda.peak = 0  # freed before the background thread read it
    assert float(value) == 30 * GB


def test_process_lifetime_peak_on_request_leaves_the_counter_alone(cuda: FakeCuda) -> None:
    cuda.step(50, 10)
    assert cuda_memory(interval_peak=False)["mem_peak_mb"] == 50 * GB
    assert not cuda.resets
