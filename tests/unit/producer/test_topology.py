"""The producer's side of sharded / 3D-parallel jobs: topology detection and per-rank gradient parts."""

from __future__ import annotations

import math
import sys
import types
from typing import Any

import pytest
import torch

from rankstream.producer.events import EventEncoder
from rankstream.producer.gradparts import GradLayout, deepspeed_norm, grad_layout, grad_parts
from rankstream.producer.topology import detect_topology, from_mesh, make_topology
from rankstream.schema import InvalidEvent, decode_event


class FakeMesh:
    """What ``from_mesh`` reads of a DeviceMesh: 2 (dp_replicate) x 2 (dp_shard) x 2 (tp), this rank at (1, 0, 1)."""

    mesh_dim_names = ("dp_replicate", "dp_shard", "tp")
    ndim = 3

    def get_coordinate(self) -> list[int]:
        return [1, 0, 1]

    def size(self, dim: int) -> int:
        return 2


def test_make_topology_validates_and_from_mesh_combines_the_data_parallel_dims() -> None:
    assert make_topology(pp=(1, 4), dp=(0, 2)) == {"dp": [0, 2], "pp": [1, 4], "source": "user"}
    with pytest.raises(InvalidEvent, match="'tp' must be"):
        make_topology(tp=(2, 2))
    with pytest.raises(InvalidEvent, match="'grads'"):
        make_topology(grads="half")
    assert from_mesh(FakeMesh()) == {"dp": [2, 4], "tp": [1, 2], "source": "device_mesh"}


def test_a_deepspeed_pipeline_engine_gives_its_grid_and_a_global_norm() -> None:
    grid = types.SimpleNamespace(
        get_data_parallel_rank=lambda: 1,
        get_data_parallel_world_size=lambda: 2,
        get_stage_id=lambda: 3,
        get_pipe_parallel_world_size=lambda: 4,
        get_slice_parallel_rank=lambda: 0,
        get_slice_parallel_world_size=lambda: 1,
    )
    engine = types.SimpleNamespace(grid=grid, get_global_grad_norm=lambda: 1.5)
    assert detect_topology(engine=engine) == {
        "dp": [1, 2],
        "tp": [0, 1],
        "pp": [3, 4],
        "grads": "global",
        "source": "deepspeed",
    }
    assert deepspeed_norm(engine) == {"grad_norm": 1.5}
    assert deepspeed_norm(types.SimpleNamespace(get_global_grad_norm=lambda: None)) == {}


def test_megatron_parallel_state_when_initialized(monkeypatch: pytest.MonkeyPatch) -> None:
    ps: Any = types.ModuleType("megatron.core.parallel_state")
    ps.model_parallel_is_initialized = lambda: True
    for name, value in {
        "data_parallel": (1, 2),
        "tensor_model_parallel": (0, 2),
        "pipeline_model_parallel": (3, 4),
        "context_parallel": (0, 1),
        "expert_model_parallel": (1, 2),
    }.items():
        setattr(ps, f"get_{name}_rank", lambda v=value: v[0])
        setattr(ps, f"get_{name}_world_size", lambda v=value: v[1])
    monkeypatch.setitem(sys.modules, "megatron.core.parallel_state", ps)
    topo = detect_topology()
    assert topo is not None
    assert (topo["dp"], topo["tp"], topo["pp"], topo["cp"], topo["ep"]) == ([1, 2], [0, 2], [3, 4], [0, 1], [1, 2])
    ps.model_parallel_is_initialized = lambda: False
    assert detect_topology() is None


def _lora_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.base = torch.nn.Linear(4, 4)
    model.lora_A = torch.nn.Linear(4, 2, bias=False)
    model.lora_B = torch.nn.Linear(2, 4, bias=False)
    x = torch.randn(3, 4)
    (model.base(x) + model.lora_B(model.lora_A(x))).pow(2).sum().backward()
    return model


def test_a_plain_model_is_one_replica_and_its_parts_are_its_norms_squared() -> None:
    model = _lora_model()
    assert grad_layout(model) == GradLayout() and detect_topology(model) is None
    parts = {k: float(v) for k, v in grad_parts(model.named_parameters(), GradLayout()).items()}
    sq_a = sum(float(p.grad.pow(2).sum()) for n, p in model.named_parameters() if n.startswith("lora_"))
    sq_b = sum(float(p.grad.pow(2).sum()) for n, p in model.named_parameters() if n.startswith("base"))
    assert math.isclose(parts["grad_sq_adapter"], sq_a, rel_tol=1e-6)
    assert math.isclose(parts["grad_sq_backbone"], sq_b, rel_tol=1e-6)
    assert math.isclose(parts["grad_sq"], sq_a + sq_b, rel_tol=1e-6)
    assert math.isclose(parts["grad_norm"], math.sqrt(sq_a + sq_b), rel_tol=1e-6)
    assert math.isclose(parts["grad_norm_adapter"], math.sqrt(sq_a), rel_tol=1e-6)


def test_an_empty_adapter_shard_reports_a_zero_part_and_no_adapter_norm() -> None:
    model = _lora_model()
    for name, param in model.named_parameters():
        if name.startswith("lora_"):
            param.data = torch.zeros(0)  # what FSDP1 leaves on a rank that holds none of the matrix
            param.grad = torch.zeros(0)
    parts = grad_parts(model.named_parameters(), GradLayout((3, 4), "shard"))
    assert float(parts["grad_sq_adapter"]) == 0.0 and "grad_norm_adapter" not in parts
    assert float(parts["grad_sq_backbone"]) > 0


def test_the_encoder_sends_the_topology_with_run_start_only() -> None:
    encoder = EventEncoder("r", 1, 4, 1)
    encoder.topology = make_topology(dp=(1, 4), shard=(1, 4), grads="shard")
    start = decode_event(encoder.encode("run_start", -1, 1.0, 0))
    step = decode_event(encoder.encode("step", 0, 1.0, 1, {"grad_sq": 1.0}))
    assert start["topology"] == {"dp": [1, 4], "shard": [1, 4], "grads": "shard", "source": "user"}
    assert "topology" not in step and step["metrics"] == {"grad_sq": 1.0}


def test_the_callbacks_keep_todays_path_for_a_plain_model_and_unclip_scales_parts_by_the_square() -> None:
    from rankstream.producer.hf_taps import unclip
    from rankstream.producer.topology import callback_layout

    assert callback_layout(_lora_model()) == (None, None)
    clipped = {"grad_norm_adapter": torch.tensor(0.5), "grad_sq_adapter": torch.tensor(0.25)}
    restored = unclip(clipped, torch.tensor(4.0), 1.0)  # clipping multiplied every gradient by ~1/4
    assert math.isclose(float(restored["grad_norm_adapter"]), 2.0, rel_tol=1e-5)
    assert math.isclose(float(restored["grad_sq_adapter"]), 4.0, rel_tol=1e-5)


def test_pipeline_stages_hold_distinct_parts_even_when_the_sharding_mesh_does_not_know_them() -> None:
    from rankstream.producer.topology import _with_layout

    found = make_topology(pp=(1, 2), dp=(3, 4))
    fsdp = GradLayout((3, 4), "shard", "dtensor", ("dp",))
    assert _with_layout(found, fsdp)["shard"] == [7, 8]
    assert _with_layout(found, GradLayout())["shard"] == [1, 2]  # DDP within a stage: replicas per stage
    assert _with_layout(make_topology(dp=(3, 4)), fsdp)["shard"] == [3, 4]
    megatron = make_topology(dp=(1, 2), tp=(1, 2), pp=(1, 2))  # no DTensor mesh: every TP / PP rank is distinct
    assert _with_layout(megatron, GradLayout())["shard"] == [3, 4]
