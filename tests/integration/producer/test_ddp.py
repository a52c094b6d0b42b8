"""A real 2-rank gloo DDP job: ranks agree on run_id by broadcast, StepTimer reports real data time."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rankstream.config import Settings
from rankstream.producer import Reporter
from rankstream.producer.loop import StepTimer
from tests.integration.producer.support import consume, finished, seq_problems

pytestmark = pytest.mark.kafka

STEPS = 15
SLOW_RANK = 1
DATA_SLEEP_S = 0.05


def _worker(rank: int, world_size: int, port: int, settings: Settings, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        reporter = Reporter(settings=settings, meta={"team": "t"}, max_events_per_s=0, heartbeat_s=0.5)
        Path(out_dir, f"rank{rank}").write_text(f"{reporter.run_id} {reporter.identity.source}")
        timer = StepTimer(reporter)
        for step in range(1, STEPS + 1):
            if rank == SLOW_RANK:
                time.sleep(DATA_SLEEP_S)  # slow data loading on this rank
            x = torch.randn(16, 8)
            with timer.step(step) as s:
                loss = model(x).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                s.log(loss=loss.detach())
        timer.close(timeout=30)
    finally:
        dist.destroy_process_group()


def test_gloo_ddp_ranks_share_run_id_and_report_data_time(kafka: Settings, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(2, port, kafka, str(tmp_path)), nprocs=2, join=True)
    seen = [Path(tmp_path, f"rank{r}").read_text().split() for r in range(2)]
    assert seen[0] == seen[1] and seen[0][1] == "broadcast"
    run_id = seen[0][0]
    events = consume(kafka, finished(run_id, 2))
    assert seq_problems(events, run_id) == {0: ([], []), 1: ([], [])}
    steps = [e for e in events if e["run_id"] == run_id and e["kind"] == "step"]
    assert {(e["rank"], e["world_size"]) for e in steps} == {(0, 2), (1, 2)}
    slow = [e["metrics"] for e in steps if e["rank"] == SLOW_RANK]
    assert len(slow) == STEPS
    assert all(m["data_time_s"] >= DATA_SLEEP_S for m in slow[1:])  # measured, not invented
    assert all({"loss", "step_time_s", "compute_time_s"} <= set(m) for m in slow)
