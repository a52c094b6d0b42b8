"""This rank's parallel coordinates for its run_start's ``topology`` (contract v1, additive).

``make_topology`` takes them from the user; ``detect_topology`` finds them in what the job already
built: a torch ``DeviceMesh`` (``init_device_mesh``, named dimensions), a model sharded by FSDP2 /
tensor parallel (DTensor parameters) or FSDP1, a DeepSpeed engine (its pipeline grid or ``mpu``),
or Megatron's ``parallel_state`` once initialized. Nothing found: None, and the run is aggregated
as plain data parallel, as before. Pass the result as ``Reporter(topology=...)``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from rankstream.producer.gradparts import GradLayout, grad_layout
from rankstream.topology import validate_topology

log = logging.getLogger("rankstream.producer")

#: DeviceMesh dimension names (lowercase) -> contract dimension. Data-parallel names combine.
MESH_NAMES = {
    "dp": "dp",
    "ddp": "dp",
    "data": "dp",
    "replicate": "dp",
    "dp_replicate": "dp",
    "fsdp": "dp",
    "shard": "dp",
    "dp_shard": "dp",
    "dp_shard_cp": "dp",
    "tp": "tp",
    "tensor": "tp",
    "pp": "pp",
    "pipe": "pp",
    "pipeline": "pp",
    "cp": "cp",
    "context": "cp",
    "ep": "ep",
    "expert": "ep",
}


def make_topology(
    *,
    dp: tuple[int, int] | None = None,
    tp: tuple[int, int] | None = None,
    pp: tuple[int, int] | None = None,
    cp: tuple[int, int] | None = None,
    ep: tuple[int, int] | None = None,
    shard: tuple[int, int] | None = None,
    grads: str | None = None,
    source: str = "user",
) -> dict[str, Any]:
    """A validated topology from ``(rank, size)`` pairs (raises ``InvalidEvent`` on a bad one)."""
    pairs = (("dp", dp), ("tp", tp), ("pp", pp), ("cp", cp), ("ep", ep), ("shard", shard))
    return _build({name: value for name, value in pairs if value is not None}, source, grads)


def _build(dims: dict[str, tuple[int, int]], source: str, grads: str | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {name: [int(rank), int(size)] for name, (rank, size) in dims.items()}
    raw["source"] = source
    if grads is not None:
        raw["grads"] = grads
    return validate_topology(raw)


def from_mesh(mesh: Any) -> dict[str, Any]:
    """Coordinates from a torch ``DeviceMesh`` whose dimensions are named (``dp``, ``tp``, ``pp``, ...)."""
    names = getattr(mesh, "mesh_dim_names", None) or ()
    coords = mesh.get_coordinate() or [0] * mesh.ndim
    dims: dict[str, tuple[int, int]] = {}
    for i, name in enumerate(names):
        dim = MESH_NAMES.get(str(name).lower())
        if dim is None:
            continue
        rank, size = dims.get(dim, (0, 1))
        dims[dim] = (rank * mesh.size(i) + coords[i], size * mesh.size(i))
    return _build(dims, "device_mesh")


def _with_layout(topology: dict[str, Any], layout: GradLayout) -> dict[str, Any]:
    """``topology`` with the gradient part of ``layout``. Pipeline stages hold different layers and tensor
    parallel ranks different slices, which a sharding mesh without those dimensions does not see (a stage
    is its own module; Megatron's TP is no DTensor): their parts are distinct too. (Outside DTensor a TP
    rank's ``grad_sq`` must then count a TP-duplicated parameter on TP rank 0 only, as Megatron does.)"""
    out = dict(topology)
    index, count = layout.shard
    known = {MESH_NAMES.get(d.lower()) for d in layout.shard_dims}
    for dim in ("tp", "pp"):
        coords = topology.get(dim)
        if coords and coords[1] > 1 and dim not in known:
            index, count = coords[0] * count + index, coords[1] * count
    out["shard"] = [index, count]
    out["grads"] = "shard" if count > 1 else layout.grads
    return validate_topology(out)


def _deepspeed(engine: Any) -> dict[str, Any] | None:
    grid = getattr(engine, "grid", None)  # PipelineEngine
    if grid is not None:
        return make_topology(
            dp=(grid.get_data_parallel_rank(), grid.get_data_parallel_world_size()),
            pp=(grid.get_stage_id(), grid.get_pipe_parallel_world_size()),
            tp=(grid.get_slice_parallel_rank(), grid.get_slice_parallel_world_size()),
            grads="global",
            source="deepspeed",
        )
    mpu = getattr(engine, "mpu", None)
    dp = (int(engine.global_rank), int(engine.world_size)) if hasattr(engine, "global_rank") else None
    tp = None
    if mpu is not None:
        dp = (mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size())
        tp = (mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size())
    stage = getattr(engine, "zero_optimization_stage", None)
    if callable(stage) and stage() == 3 and dp is not None and tp is None:  # partitions: one part per DP rank
        return make_topology(dp=dp, shard=dp, grads="shard", source="deepspeed")
    return make_topology(dp=dp, tp=tp, grads="global", source="deepspeed")


def _megatron() -> dict[str, Any] | None:
    ps = sys.modules.get("megatron.core.parallel_state")
    if ps is None or not ps.model_parallel_is_initialized():
        return None
    dims = {
        "dp": (ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()),
        "tp": (ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()),
        "pp": (ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size()),
    }
    for name, rank, size in (
        ("cp", "get_context_parallel_rank", "get_context_parallel_world_size"),
        ("ep", "get_expert_model_parallel_rank", "get_expert_model_parallel_world_size"),
    ):
        if hasattr(ps, rank):
            dims[name] = (getattr(ps, rank)(), getattr(ps, size)())
    return _build(dims, "megatron")


def detect_topology(model: Any = None, *, mesh: Any = None, engine: Any = None) -> dict[str, Any] | None:
    """This rank's topology from the first of: a DeepSpeed ``engine``, Megatron's parallel state, a named
    ``mesh``, the model's sharding (FSDP2 / TP DTensors, FSDP1). With a ``model`` the gradient part this
    rank holds (``shard``, ``grads``) is added, as :func:`~rankstream.producer.gradparts.grad_layout`
    finds it. None when the job is plain data parallel (or nothing is known)."""
    if engine is not None:
        return _deepspeed(engine)
    found = _megatron()
    if found is None and mesh is not None:
        found = from_mesh(mesh)
    if model is None:
        return found
    layout = grad_layout(model)
    if found is None:
        if layout.source == "ddp":
            return None
        found = _from_model_mesh(model) or make_topology(dp=_dist_rank(), source=layout.source)
    return _with_layout(found, layout)


def _from_model_mesh(model: Any) -> dict[str, Any] | None:
    """The named mesh of the model's first DTensor parameter (FSDP2 / TP), if it has names."""
    for param in model.parameters():
        mesh = getattr(param, "device_mesh", None)
        if mesh is not None and getattr(mesh, "mesh_dim_names", None):
            return from_mesh(mesh)
    return None


def _dist_rank() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def callback_layout(model: Any) -> tuple[dict[str, Any] | None, GradLayout | None]:
    """For the framework callbacks: the model's topology, and its gradient layout when the rank holds a
    shard (then :func:`~rankstream.producer.gradparts.grad_parts` replaces the shard norms). Never raises:
    a layout it cannot read leaves the callback as it was, with one warning."""
    try:
        topology = detect_topology(model)
        if topology is None or topology.get("grads") != "shard":
            return topology, None
        return topology, grad_layout(model)
    except Exception as exc:  # a framework version this does not know: report as plain data parallel
        log.warning("rankstream: could not read the parallel layout of the model (%s): reported as data parallel", exc)
        return None, None
