"""FSDP2 on CPU (gloo, 4 ranks), a tiny transformers model with a real PEFT LoRA (issue 15).

Every rank publishes the sums of squares of the gradient shard it holds and its topology; the
events go through the real broker and the stream core. The aggregated global adapter / backbone /
total norms must equal the norms of the same step computed unsharded (relative error <= 1e-5):
rank 0 trains an unsharded copy on all four ranks' batches alongside. A healthy run raises no LoRA
alert; a run whose adapters get no gradient raises ``adapter_grad_vanishing``.
"""

from __future__ import annotations

import copy
import json
import math
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rankstream.config import Settings
from rankstream.stream_jobs.core import Engine
from tests.integration.producer.support import consume, finished, seq_problems

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(480)]  # ~40 s on a quiet 2-core machine

WORLD = 4
STEPS = 12


def _model(broken: bool) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    base = LlamaForCausalLM(config)
    lora = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, lora)
    for name, param in model.named_parameters():
        if broken and "lora_" in name:
            torch.nn.init.zeros_(param)  # A = B = 0: the adapters never get a gradient
        if not broken and name.endswith("norm.weight"):
            param.requires_grad_(True)  # a trainable backbone part, so its norm is tested too
    return model


def _batch(rank: int, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randint(0, 64, (2, 8), generator=gen)


def _norms(model: Any) -> dict[str, float]:
    sq = {"adapter": 0.0, "backbone": 0.0}
    for name, param in model.named_parameters():
        if param.grad is not None:
            sq["adapter" if "lora_" in name else "backbone"] += float(param.grad.double().pow(2).sum())
    return {
        "grad_norm": math.sqrt(sq["adapter"] + sq["backbone"]),
        "grad_norm_adapter": math.sqrt(sq["adapter"]),
        "grad_norm_backbone": math.sqrt(sq["backbone"]),
    }


def _train(rank: int, run_id: str, broken: bool, settings: Settings, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from rankstream.producer import Reporter
    from rankstream.producer.gradparts import grad_layout, grad_parts
    from rankstream.producer.topology import detect_topology

    model = _model(broken)
    reference = copy.deepcopy(model) if rank == 0 else None
    mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("dp",))
    for layer in model.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    ref_opt = torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=0.05) if reference else None
    layout = grad_layout(model)
    reporter = Reporter(run_id, settings=settings, topology=detect_topology(model), max_events_per_s=0, heartbeat_s=0.5)
    expected: dict[int, dict[str, float]] = {}
    for step in range(1, STEPS + 1):
        loss = model(input_ids=_batch(rank, step), labels=_batch(rank, step)).loss
        loss.backward()
        reporter.log(step, {**grad_parts(model.named_parameters(), layout), "loss": loss.detach()})
        opt.step()
        opt.zero_grad()
        if reference is not None and ref_opt is not None:
            ref_loss = sum(reference(input_ids=_batch(r, step), labels=_batch(r, step)).loss for r in range(WORLD))
            (ref_loss / WORLD).backward()
            expected[step] = _norms(reference)
            ref_opt.step()
            ref_opt.zero_grad()
    reporter.close(timeout=30)
    if rank == 0:
        Path(out_dir, f"{run_id}.json").write_text(json.dumps(expected))


def _worker(rank: int, port: int, settings: Settings, out_dir: str, run_ids: tuple[str, str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        _train(rank, run_ids[0], False, settings, out_dir)
        _train(rank, run_ids[1], True, settings, out_dir)
    finally:
        dist.destroy_process_group()


def _replay(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    engine = Engine()
    out = engine.process_many(events)
    out.extend(engine.finish())
    return out.steps, out.alerts


def test_fsdp2_lora_global_norms_from_the_stream_equal_the_unsharded_norms(kafka: Settings, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tag = uuid.uuid4().hex[:8]
    healthy, broken = f"fsdp-{tag}-healthy", f"fsdp-{tag}-broken"
    mp.spawn(_worker, args=(port, kafka, str(tmp_path), (healthy, broken)), nprocs=WORLD, join=True)

    events = consume(kafka, lambda evs: finished(healthy, WORLD)(evs) and finished(broken, WORLD)(evs))
    for run_id in (healthy, broken):
        assert seq_problems(events, run_id) == {r: ([], []) for r in range(WORLD)}
        starts = {e["rank"]: e["topology"] for e in events if e["run_id"] == run_id and e["kind"] == "run_start"}
        assert {r: (t["shard"], t["grads"], t["dp"]) for r, t in starts.items()} == {
            r: ([r, WORLD], "shard", [r, WORLD]) for r in range(WORLD)
        }

    steps, alerts = _replay([e for e in events if e["run_id"] == healthy])
    expected = json.loads(Path(tmp_path, f"{healthy}.json").read_text())
    assert sorted(s["step"] for s in steps) == list(range(1, STEPS + 1))
    for rec in steps:
        want = expected[str(rec["step"])]
        assert rec["grad_parts"] == {"expected": WORLD, "present": WORLD, "exact": True}
        for name, value in want.items():
            got = rec["metrics"][name]["mean"]
            assert value > 0 and abs(got - value) <= 1e-5 * value, (rec["step"], name, got, value)
        shard_mean = rec["metrics"]["grad_norm_shard"]["mean"]
        assert abs(shard_mean - want["grad_norm"]) > 1e-3 * want["grad_norm"]  # what the mean of shards gave
    assert not [a for a in alerts if a["rule"] in ("adapter_grad_vanishing", "grad_vanishing")]

    steps, alerts = _replay([e for e in events if e["run_id"] == broken])
    assert all(rec["metrics"]["grad_norm_adapter"]["mean"] == 0.0 for rec in steps)
    fired = [a for a in alerts if a["rule"] == "adapter_grad_vanishing" and a.get("state", "firing") == "firing"]
    assert [a["step"] for a in fired] == [10]
