"""A run's many lives on a real broker: SIGTERM mid-run, a relaunch under the same run id, and a flush of
several dead ranks' spools merged by time. Every seq of every (rank, inc) is counted."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from rankstream.config import Settings
from rankstream.producer import Reporter
from tests.integration.producer.support import consume, finished, inc_seq_problems, seq_problems
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.kafka

_TRAINING = textwrap.dedent(
    """
    import sys, time
    from rankstream.config import Settings
    from rankstream.producer import Reporter
    bootstrap, prefix, state_dir = sys.argv[1:4]
    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, state_dir=state_dir)
    r = Reporter("sigterm-run", settings=settings, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0.2)
    for step in range(1_000_000):
        r.log(step, loss=1.0 / (step + 1), lr=1e-3)
        if step == 300:
            print("running", flush=True)
        time.sleep(0.002)
    """
)


def test_sigterm_mid_run_delivers_run_end_and_every_seq(kafka: Settings, tmp_path: Path) -> None:
    state_dir = tmp_path / "child"
    proc = subprocess.Popen(
        [sys.executable, "-c", _TRAINING, kafka.bootstrap_servers, kafka.topic_prefix, str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "running"
        proc.send_signal(signal.SIGTERM)  # what torchrun and SLURM send
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # pragma: no cover - only when an assertion above failed
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGTERM, err[-2000:]  # it still died by the signal

    events = [e for e in consume(kafka, finished("sigterm-run", 1)) if e["run_id"] == "sigterm-run"]
    assert seq_problems(events, "sigterm-run") == {0: ([], [])}
    ends = [e for e in events if e["kind"] == "run_end"]
    assert [e["tags"] for e in ends] == [{"status": "terminated", "reason": "SIGTERM"}]
    assert ends[0]["seq"] == max(e["seq"] for e in events)  # nothing after run_end, nothing lost before it
    steps = [e["step"] for e in events if e["kind"] == "step"]
    assert steps == list(range(len(steps))) and len(steps) > 300 and ends[0]["step"] == steps[-1]
    assert len({e["inc"] for e in events}) == 1
    assert not list(state_dir.rglob("seg-*.log"))  # the bounded flush reached Kafka: nothing left on disk


def test_relaunch_under_the_same_run_id_keeps_both_incarnations(kafka: Settings) -> None:
    def launch(steps: range) -> Reporter:
        r = Reporter("relaunch-run", settings=kafka, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0.1)
        for step in steps:
            r.log(step, loss=1.0 / (step + 1))
        r.close(timeout=30)
        assert r.stats["spool_pending"] == 0
        return r

    first = launch(range(0, 600))
    second = launch(range(500, 1000))  # resumed from the checkpoint of step 500: steps 500-599 again

    events = consume(kafka, finished("relaunch-run", 1, incs=2))
    problems = inc_seq_problems(events, "relaunch-run")
    assert problems == {(0, first.inc): ([], []), (0, second.inc): ([], [])}
    for r, steps in ((first, range(0, 600)), (second, range(500, 1000))):
        mine = [e for e in events if e["run_id"] == "relaunch-run" and e["inc"] == r.inc]
        assert sorted(e["seq"] for e in mine) == list(range(r.stats["enqueued"]))  # seq from 0 per inc
        assert [e["step"] for e in mine if e["kind"] == "step"] == list(steps)
        assert [e["tags"]["reason"] for e in mine if e["kind"] == "run_end"] == ["normal"]


class _Unreachable:
    """The broker of the dead ranks below: never reachable, so everything they log is spooled."""

    connect_timeout_s = 60.0  # no reconnect fits into close(): it spools at once

    def connect(self, client_id: str) -> Any:
        raise ConnectionRefusedError("broker down")

    def release(self, producer: Any, timeout: float) -> None:  # pragma: no cover
        pass


def test_spool_flush_of_four_ranks_delivers_them_merged_by_time(kafka: Settings, tmp_path: Path) -> None:
    spool_root = tmp_path / "spool"
    ranks = [
        Reporter(
            "flush-run",
            settings=kafka,
            rank=rank,
            world_size=4,
            spool_dir=spool_root,
            max_events_per_s=0,
            heartbeat_s=0,
            transport=_Unreachable(),
        )
        for rank in range(4)
    ]
    steps = 1500
    for step in range(steps):  # the ranks step together: their ts interleave
        for r in ranks:
            r.log(step, loss=1.0, grad_norm=float(r.rank))
    for r in ranks:
        r.close(timeout=0)
        assert r.stats["spool_pending"] == steps + 2
    flush = ["spool", "flush", str(spool_root), "--bootstrap", kafka.bootstrap_servers, "--prefix", kafka.topic_prefix]
    out = subprocess.run(
        [sys.executable, "-m", "rankstream.cli", *flush],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert f"delivered {4 * (steps + 2)} events" in out.stdout

    events = [e for e in consume(kafka, finished("flush-run", 4)) if e["run_id"] == "flush-run"]  # topic order
    assert seq_problems(events, "flush-run") == {rank: ([], []) for rank in range(4)}
    assert len(events) == 4 * (steps + 2)
    stamps = [e["ts"] for e in events]
    assert stamps == sorted(stamps)  # one stream in event-time order
    first_steps = [e["rank"] for e in events if e["kind"] == "step"][:8]
    assert sorted(first_steps) == [0, 0, 1, 1, 2, 2, 3, 3]  # interleaved, not one rank after another
    assert not list(spool_root.rglob("seg-*.log"))
