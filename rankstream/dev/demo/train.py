"""A real 4-rank PyTorch data-parallel job on the CPU (gloo) with injected faults.

Gradients are averaged with an explicit all-reduce (what DDP does), so each
rank can measure its own compute time apart from the time it waits for the
others. Faults are real, not fabricated metrics:

- loss spike: every rank gets a corrupted batch (inputs scaled up) at one step;
- straggler: one rank's data loading sleeps for a range of steps;
- NaN: one rank's batch contains a NaN late in the run, so its loss is NaN and
  the averaged gradient is non-finite on every rank (the step is skipped, as a
  loss scaler would);
- killed rank: one rank's process is frozen near the end (SIGSTOP: no more
  events, no heartbeats, its sockets stay open, like a node that stopped
  responding); the others block in the next all-reduce with their heartbeats
  going on until the collective times out; the demo then SIGKILLs it.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import asdict, dataclass
from datetime import timedelta

from rankstream.config import Settings


@dataclass(frozen=True)
class DemoFaults:
    spike_step: int = 150
    straggler_rank: int = 2
    straggler_steps: tuple[int, int] = (60, 140)
    straggler_delay_s: float = 0.08
    nan_rank: int = 1
    nan_step: int = 230
    kill_rank: int = 3
    kill_step: int = 270


@dataclass(frozen=True)
class DemoJob:
    run_id: str
    settings: Settings
    world_size: int = 4
    steps: int = 300
    warmup_steps: int = 30
    batch_size: int = 64
    hidden: int = 256
    master_port: int = 29531
    collective_timeout_s: float = 25.0
    heartbeat_s: float = 1.0
    faults: DemoFaults = DemoFaults()


def _synthetic_batch(generator, batch_size: int, dim: int, teacher):
    import torch

    x = torch.randn(batch_size, dim, generator=generator)
    with torch.no_grad():
        y = teacher(x) + 0.05 * torch.randn(batch_size, 1, generator=generator)
    return x, y


def run_rank(rank: int, job: DemoJob) -> None:
    """Body of one rank (called by torch.multiprocessing.spawn)."""
    import torch
    import torch.distributed as dist

    from rankstream.producer import Reporter

    torch.set_num_threads(1)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(job.master_port)
    dist.init_process_group(
        "gloo", rank=rank, world_size=job.world_size, timeout=timedelta(seconds=job.collective_timeout_s)
    )
    faults = job.faults
    dim = 32
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(dim, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    model = torch.nn.Sequential(
        torch.nn.Linear(dim, job.hidden),
        torch.nn.GELU(),
        torch.nn.Linear(job.hidden, job.hidden),
        torch.nn.GELU(),
        torch.nn.Linear(job.hidden, 1),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    peak_lr = 3e-3

    def lr_at(step: int) -> float:
        if step < job.warmup_steps:
            return peak_lr * (step + 1) / job.warmup_steps
        progress = (step - job.warmup_steps) / max(1, job.steps - job.warmup_steps)
        return peak_lr * 0.5 * (1 + math.cos(math.pi * progress))

    generator = torch.Generator().manual_seed(1000 + rank)
    reporter = Reporter(
        job.run_id,
        settings=job.settings,
        rank=rank,
        world_size=job.world_size,
        local_rank=rank,
        heartbeat_s=job.heartbeat_s,
        max_events_per_s=0,
        meta={
            "run_name": "demo-mlp-regression",
            "team": "demo-team",
            "project": "rankstream-demo",
            "task_type": "pretrain",
            "model_name": f"mlp-{job.hidden}",
            "model_architecture": "MLP",
            "config": {"steps": job.steps, "world_size": job.world_size, "faults": asdict(faults)},
        },
    )
    reporter.start()
    params = list(model.parameters())
    status = "finished"
    try:
        for step in range(job.steps):
            t0 = time.perf_counter()
            x, y = _synthetic_batch(generator, job.batch_size, dim, teacher)
            lo, hi = faults.straggler_steps
            if rank == faults.straggler_rank and lo <= step < hi:
                time.sleep(faults.straggler_delay_s)  # slow data loading on one rank
            if step == faults.spike_step:
                x = x * 25.0  # a corrupted batch on every rank: a real loss spike
            if rank == faults.nan_rank and step == faults.nan_step:
                x[0, 0] = float("nan")
            if rank == faults.kill_rank and step == faults.kill_step:
                os.kill(os.getpid(), signal.SIGSTOP)  # the rank freezes: no events, no heartbeats
            t_data = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            optimizer.zero_grad(set_to_none=False)
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            t_compute = time.perf_counter()
            grads = [p.grad for p in params if p.grad is not None]  # zero_grad(set_to_none=False): all set
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= job.world_size
            offset = 0
            for g in grads:
                n = g.numel()
                g.copy_(flat[offset : offset + n].view_as(g))
                offset += n
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
            if math.isfinite(grad_norm):
                optimizer.step()
            t_end = time.perf_counter()
            reporter.log(
                step,
                loss=float(loss.detach()),
                lr=lr_at(step),
                grad_norm=grad_norm,
                step_time_s=t_end - t0,
                data_time_s=t_data - t0,
                compute_time_s=t_compute - t_data,
                samples_per_s=job.batch_size / (t_end - t0),
                tags={"stage": "warmup" if step < job.warmup_steps else "stable", "precision": "fp32"},
            )
    except Exception:
        status = "failed"
    finally:
        reporter.close(timeout=10.0, status=status)
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def launch(job: DemoJob):
    """Start all ranks in the background; returns torch's process context."""
    import torch.multiprocessing as mp

    return mp.start_processes(run_rank, args=(job,), nprocs=job.world_size, join=False, start_method="spawn")
