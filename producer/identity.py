"""Who this process is in the job: run_id, rank, world_size, local_rank, host.

Detection needs no communication in the common launchers (torchrun, SLURM,
MPI): everything comes from torch.distributed state when it is initialized,
else from the launcher's environment variables. Only when no launcher gives a
run id and torch.distributed is up do the ranks agree on one by a broadcast.
torch is never imported here: it is consulted only if the job imported it.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

# (rank, world_size, local_rank) variable names, most specific launcher first.
_LAUNCHER_VARS: tuple[tuple[str, str, str], ...] = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),  # torchrun / torch.distributed.launch / accelerate / deepspeed
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),  # Open MPI
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),  # MPICH / Intel MPI
    ("PMIX_RANK", "PMIX_SIZE", "PMIX_LOCAL_RANK"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),  # srun
)


@dataclass(frozen=True)
class RunIdentity:
    """The identity every event of this rank carries; ``source`` says where run_id came from."""

    run_id: str
    rank: int
    world_size: int
    local_rank: int
    host: str
    source: str = "argument"


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _torch_dist():
    """torch.distributed when the job imported it and initialized a process group, else None."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return None
    try:
        if dist.is_available() and dist.is_initialized():
            return dist
    except Exception:  # a half-imported or broken torch must not stop training
        return None
    return None


def detect_ranks(env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank): torch.distributed first, then launcher variables, else (0, 1, 0)."""
    env = os.environ if env is None else env
    local_from_env: int | None = None
    for rank_var, size_var, local_var in _LAUNCHER_VARS:
        rank, size = _int_env(env, rank_var), _int_env(env, size_var)
        if rank is not None and size is not None and 0 <= rank < size:
            local = _int_env(env, local_var)
            local_from_env = local if local is not None and local >= 0 else None
            break
    else:
        rank, size = None, None
    dist = _torch_dist()
    if dist is not None:
        d_rank, d_size = int(dist.get_rank()), int(dist.get_world_size())
        local = _int_env(env, "LOCAL_RANK")
        if local is None:
            local = local_from_env if rank == d_rank else d_rank
        return d_rank, d_size, max(local or 0, 0)
    if rank is not None and size is not None:
        return rank, size, local_from_env if local_from_env is not None else rank
    return 0, 1, 0


def _env_run_id(env: Mapping[str, str]) -> tuple[str, str] | None:
    """A run id the launcher already shares with every rank, unique per launch (and per restart)."""
    te = env.get("TORCHELASTIC_RUN_ID", "").strip()
    if te and te.lower() != "none":  # static rendezvous uses the literal "none": not unique
        restart = _int_env(env, "TORCHELASTIC_RESTART_COUNT") or 0
        return (te if restart == 0 else f"{te}-r{restart}"), "torchelastic"
    job = env.get("SLURM_JOB_ID", "").strip()
    if job:
        step = env.get("SLURM_STEP_ID", "").strip()
        restart = _int_env(env, "SLURM_RESTART_COUNT") or 0
        run_id = f"slurm-{job}" + (f".{step}" if step else "") + f"-r{restart}"
        return run_id, "slurm"
    return None


def generate_run_id() -> str:
    """A fresh id: readable launch time plus randomness."""
    return time.strftime("run-%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:8]


def _broadcast_run_id(dist) -> str | None:
    """Rank 0's fresh id, sent to every rank (a collective: every rank must call it)."""
    try:
        box = [generate_run_id() if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return str(box[0]) if box[0] else None
    except Exception as exc:  # never break training over an id
        warnings.warn(f"rankstream: run_id broadcast failed ({exc}); using a per-rank id", stacklevel=3)
        return None


def detect_run_id(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(run_id, source). Same on every rank when a launcher or torch.distributed can provide it."""
    env = os.environ if env is None else env
    found = _env_run_id(env)
    if found is not None:
        return found
    dist = _torch_dist()
    if dist is not None and dist.get_world_size() > 1:
        shared = _broadcast_run_id(dist)
        if shared:
            return shared, "broadcast"
    _, size, _ = detect_ranks(env)
    if size > 1:
        warnings.warn(
            "rankstream: no launcher run id (TORCHELASTIC_RUN_ID, SLURM_JOB_ID) and torch.distributed is not "
            "initialized: each rank generates its own run_id; pass run_id=... to keep the ranks together",
            stacklevel=3,
        )
    return generate_run_id(), "generated"


def detect_identity(
    run_id: str | None = None,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    local_rank: int | None = None,
    env: Mapping[str, str] | None = None,
) -> RunIdentity:
    """Fill what the caller did not give from torch.distributed / launcher variables.

    Call it on every rank at the same point when run_id may come from a
    broadcast (torch.distributed up, no launcher id): the broadcast is a collective.
    """
    d_rank, d_size, d_local = detect_ranks(env)
    size = world_size if world_size is not None else d_size
    r = rank if rank is not None else d_rank
    lr = local_rank if local_rank is not None else (d_local if rank is None else r if d_size == 1 else d_local)
    if size < 1:
        raise ValueError(f"world_size must be >= 1, got {size}")
    if not 0 <= r < size:
        raise ValueError(f"rank {r} out of range for world_size {size}")
    if lr < 0:
        raise ValueError(f"local_rank must be >= 0, got {lr}")
    if run_id is not None:
        if not isinstance(run_id, str) or not run_id.strip():
            raise ValueError("run_id must be a non-empty string")
        if len(run_id) > 256:
            raise ValueError("run_id longer than 256 characters")
        rid, source = run_id, "argument"
    else:
        rid, source = detect_run_id(env)
    return RunIdentity(run_id=rid, rank=r, world_size=size, local_rank=lr, host=socket.gethostname(), source=source)
