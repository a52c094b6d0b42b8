"""The producer against a real Kafka broker: no loss across ranks, restarts, SIGKILL and forks."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from rankstream.config import Settings
from rankstream.producer import Reporter
from tests.integration.producer.support import consume, finished, seq_problems
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.kafka


# ----------------------------------------------------------------- 4 ranks x 2000


def _rank_main(settings: Settings, rank: int, steps: int) -> None:
    reporter = Reporter("four-ranks", settings=settings, rank=rank, world_size=4, max_events_per_s=0, heartbeat_s=0.5)
    for step in range(steps):
        reporter.log(step, loss=1.0 / (step + 1), lr=1e-3, grad_norm=float(rank))
    reporter.close(timeout=60)
    os._exit(0 if reporter.stats["spool_pending"] == 0 else 3)


def test_four_ranks_every_seq_exactly_once(kafka: Settings) -> None:
    steps = 2000
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_rank_main, args=(kafka, rank, steps)) for rank in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    events = consume(kafka, finished("four-ranks", 4))
    problems = seq_problems(events, "four-ranks")
    assert sorted(problems) == [0, 1, 2, 3]
    for rank, (missing, dups) in problems.items():
        assert missing == [] and dups == [], f"rank {rank}: missing {missing[:10]} duplicated {dups[:10]}"
        rank_steps = [e["step"] for e in events if e["rank"] == rank and e["kind"] == "step"]
        assert rank_steps == list(range(steps))  # one partition per run: in order, too


# ----------------------------------------------------------------- SIGKILL with a spool

_KILLED_CHILD = textwrap.dedent(
    """
    import sys, time
    from rankstream.config import Settings
    from rankstream.producer import Reporter
    settings = Settings(bootstrap_servers="127.0.0.1:9", topic_prefix=sys.argv[2], state_dir=sys.argv[1])
    r = Reporter("killed-run", settings=settings, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0)
    for step in range(300):
        r.log(step, loss=float(step))
    while r.stats["spool_pending"] < 301:
        time.sleep(0.05)
    print("spooled", flush=True)
    time.sleep(600)
    """
)


def _spool_and_kill(settings: Settings, state_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(state_dir), settings.topic_prefix],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == "spooled"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert list((state_dir / "spool").rglob("seg-*.log"))


@pytest.mark.parametrize("deliverer", ["new_reporter", "cli"])
def test_sigkilled_reporter_spool_is_delivered_later(kafka: Settings, tmp_path: Path, deliverer: str) -> None:
    state_dir = tmp_path / "killed"
    _spool_and_kill(kafka, state_dir)
    spool_root = state_dir / "spool"
    if deliverer == "new_reporter":
        with Reporter("next-run", settings=kafka, spool_dir=spool_root, rank=0, world_size=1, heartbeat_s=0) as r:
            r.log(0, loss=1.0)
            deadline = time.monotonic() + 60
            while list(spool_root.glob("killed-run/rank-0/seg-*.log")) and time.monotonic() < deadline:
                time.sleep(0.1)
    else:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "rankstream.cli",
                "spool",
                "flush",
                str(spool_root),
                "--bootstrap",
                kafka.bootstrap_servers,
                "--prefix",
                kafka.topic_prefix,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=REPO_ROOT,
        )
        assert out.returncode == 0, out.stderr
        assert "delivered 301 events" in out.stdout

    def all_there(events: list[dict]) -> bool:
        return len({e["seq"] for e in events if e["run_id"] == "killed-run"}) >= 301

    events = consume(kafka, all_there)
    killed = sorted(e["seq"] for e in events if e["run_id"] == "killed-run")
    assert killed == list(range(301))
    assert not list(spool_root.rglob("seg-*.log"))


# ----------------------------------------------------------------- fork (DataLoader workers)


class _LoggingDataset(Dataset):
    """Its workers call the reporter they inherited: must be a silent no-op there."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> torch.Tensor:
        self.reporter.log(10_000 + index, worker_metric=1.0)
        return torch.full((2,), float(index))


def test_dataloader_fork_workers_do_not_break_the_reporter(kafka: Settings) -> None:
    reporter = Reporter("fork-run", settings=kafka, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0.2)
    reporter.log(0, loss=1.0)
    time.sleep(0.5)  # the parent's producer is connected before the workers fork
    loader = DataLoader(_LoggingDataset(reporter), batch_size=4, num_workers=2, multiprocessing_context="fork")
    step = 0
    for _epoch in range(2):
        for batch in loader:
            step += 1
            reporter.log(step, loss=float(batch.sum()))
    reporter.close(timeout=30)
    assert reporter.stats["spool_pending"] == 0
    events = consume(kafka, finished("fork-run", 1))
    assert seq_problems(events, "fork-run") == {0: ([], [])}
    steps = [e["step"] for e in events if e["run_id"] == "fork-run" and e["kind"] == "step"]
    assert steps == list(range(step + 1))  # nothing from the workers
