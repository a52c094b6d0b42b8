"""Per-rank parts of the gradient norms, so the stream job can compute the model's norms exactly.

Under FSDP / tensor parallelism a rank holds part of each gradient. It publishes the sum of squares
of what it holds (``grad_sq``, ``grad_sq_adapter``, ``grad_sq_backbone``), and its run_start's
``topology`` says which part that is (``shard``: index and count; equal indices are replicas).
The stream job sums one rank per part and takes the square root: the model's norm, equal to what
an unsharded run computes, with no collective added to the training loop (docs/producer.md,
"Sharded and 3D-parallel jobs").

What a rank holds, per framework:

- DDP / one process: the whole gradient, a replica (``shard`` ``[0, 1]``).
- FSDP2 (``fully_shard``) and tensor parallel: gradients are DTensors; the local tensor is this
  rank's part. A gradient replicated over a mesh dimension that also shards others (a TP
  layernorm) is counted only at coordinate 0 of that dimension, so every part is counted once.
  Mesh dimensions over which *every* gradient is replicated (HSDP's replicate dimension, DDP)
  make rank-level replicas: they are left out of the shard index.
- FSDP1 with ``use_orig_params=True``: each parameter's ``.grad`` is the view of this rank's
  flat shard (possibly empty); the part is its FSDP rank in the sharding group.
- DeepSpeed ZeRO: the engine keeps the gradients. :func:`deepspeed_norm` reads the global norm the
  engine computed in ``step()`` (what HF Trainer reports under DeepSpeed), identical on every rank;
  under ZeRO-3 :func:`deepspeed_parts` reads this rank's gradient partition before ``step()``.

All functions return tensors (no device sync); the reporter's thread reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rankstream.producer.torchstats import _sq_norm, is_adapter_param


@dataclass(frozen=True)
class GradLayout:
    """How this rank's gradients split: its part (``shard`` index, count), what it holds (``grads``),
    and the mesh dimensions (by name) whose non-zero coordinates skip a gradient replicated over them."""

    shard: tuple[int, int] = (0, 1)
    grads: str = "replica"
    source: str = "ddp"
    shard_dims: tuple[str, ...] = ()


def _dtensor_type() -> Any:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    return DTensor


def _dim_names(mesh: Any) -> tuple[str, ...]:
    names = getattr(mesh, "mesh_dim_names", None)
    return tuple(names) if names else tuple(f"dim{i}" for i in range(mesh.ndim))


def _fsdp1_module(model: Any) -> Any:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover
        return None
    for module in model.modules():
        if isinstance(module, FullyShardedDataParallel):
            return module
    return None


def grad_layout(model: Any) -> GradLayout:
    """Find how ``model``'s gradients are split on this rank (call once, after wrapping)."""
    dtensor = _dtensor_type()
    mesh = None
    shard_dims: set[str] = set()
    if dtensor is not None:
        for param in model.parameters():
            if isinstance(param, dtensor):
                mesh = mesh or param.device_mesh
                names = _dim_names(param.device_mesh)
                shard_dims.update(names[i] for i, p in enumerate(param.placements) if not p.is_replicate())
    if mesh is not None:
        names = _dim_names(mesh)
        coords = mesh.get_coordinate() or [0] * mesh.ndim
        index, count = 0, 1
        for i, name in enumerate(names):
            if name in shard_dims:
                size = mesh.size(i)
                index, count = index * size + coords[i], count * size
        ordered = tuple(n for n in names if n in shard_dims)
        return GradLayout((index, count), "shard" if count > 1 else "replica", "dtensor", ordered)
    fsdp = _fsdp1_module(model)
    if fsdp is not None:
        size = int(getattr(fsdp, "world_size", 1))
        return GradLayout((int(getattr(fsdp, "rank", 0)), size), "shard" if size > 1 else "replica", "fsdp1")
    return GradLayout()


def _local_part(grad: Any, layout: GradLayout, dtensor: Any) -> Any:
    """The tensor this rank counts for ``grad``: its local shard, or None when another rank counts it."""
    if dtensor is None or not isinstance(grad, dtensor):
        return grad
    mesh = grad.device_mesh
    coords = mesh.get_coordinate()
    if coords is None:
        return None
    names = _dim_names(mesh)
    for i, placement in enumerate(grad.placements):
        if placement.is_replicate() and names[i] in layout.shard_dims and coords[i] != 0:
            return None  # a copy of what coordinate 0 of this dimension counts
    return grad.to_local()


def grad_parts(
    named_parameters: Iterable[tuple[str, Any]],
    layout: GradLayout,
    adapter_filter: Callable[[str], bool] = is_adapter_param,
) -> dict[str, Any]:
    """This rank's ``grad_sq`` (and ``_adapter`` / ``_backbone`` when adapters are present) and the norms
    of its part (``grad_norm*``: what older stream jobs read). A rank whose adapter part is empty
    reports ``grad_sq_adapter`` 0 and no ``grad_norm_adapter`` (it holds no adapter gradient)."""
    dtensor = _dtensor_type()
    adapter: list[Any] = []
    backbone: list[Any] = []
    adapters_seen = False
    for name, param in named_parameters:
        grad = getattr(param, "grad", None)
        if grad is None or not getattr(param, "requires_grad", False):
            continue
        is_adapter = adapter_filter(name)
        adapters_seen = adapters_seen or is_adapter
        part = _local_part(grad.detach(), layout, dtensor)
        if part is None or part.numel() == 0:
            continue
        if getattr(part, "is_sparse", False):
            part = part.coalesce()._values()
        (adapter if is_adapter else backbone).append(part)
    return _parts(adapter, backbone, adapters_seen)


def _parts(adapter: list[Any], backbone: list[Any], adapters_seen: bool) -> dict[str, Any]:
    import torch

    zero = torch.zeros((), dtype=torch.float32)
    sq_a = _sq_norm(adapter) if adapter else zero
    sq_b = _sq_norm(backbone) if backbone else zero
    out: dict[str, Any] = {"grad_sq": sq_a + sq_b.to(sq_a.device), "grad_norm": (sq_a + sq_b.to(sq_a.device)).sqrt()}
    if adapters_seen:
        out["grad_sq_adapter"] = sq_a
        out["grad_sq_backbone"] = sq_b
        out["grad_norm_backbone"] = sq_b.sqrt()
        if adapter:
            out["grad_norm_adapter"] = sq_a.sqrt()
    return out


def deepspeed_parts(engine: Any, adapter_filter: Callable[[str], bool] = is_adapter_param) -> dict[str, Any]:
    """ZeRO-3: the parts of this rank's gradient partition (``safe_get_local_grad``), as :func:`grad_parts`
    returns them. Call after ``engine.backward()`` and before ``engine.step()`` (which frees them); the
    partitions of the data-parallel ranks are distinct (topology ``shard`` = the DP rank). Empty for a
    model that is not ZeRO-3 partitioned (stages 1 and 2: use :func:`deepspeed_norm`)."""
    from deepspeed.utils import safe_get_local_grad

    adapter: list[Any] = []
    backbone: list[Any] = []
    adapters_seen = False
    for name, param in engine.module.named_parameters():
        if not getattr(param, "requires_grad", False) or not hasattr(param, "ds_id"):
            continue
        is_adapter = adapter_filter(name)
        adapters_seen = adapters_seen or is_adapter
        part = safe_get_local_grad(param)
        if part is not None and part.numel():
            (adapter if is_adapter else backbone).append(part.detach())
    if not adapter and not backbone and not adapters_seen:
        return {}
    return _parts(adapter, backbone, adapters_seen)


def deepspeed_norm(engine: Any) -> dict[str, Any]:
    """The global gradient norm a DeepSpeed engine computed in its last ``step()`` (ZeRO 1-3), as
    ``grad_norm``; empty when the engine did not compute one (stage 1/2 with norm computation off)."""
    get = getattr(engine, "get_global_grad_norm", None)
    norm = get() if callable(get) else None
    return {} if norm is None else {"grad_norm": norm}
