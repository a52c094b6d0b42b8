"""DeepSpeed ZeRO 1-3 on CPU (``DS_ACCELERATOR=cpu``, gloo, 2 ranks): the stream's grad norms are the model's.

``deepspeed`` is in the dev extras (``make setup`` installs it; the ops are not built, the CPU
accelerator needs none). Each rank
encodes its events with the producer's encoder (run_start with the topology found on the engine,
steps with ``deepspeed_norm`` and, under ZeRO-3, ``deepspeed_parts``); the core aligns them. Rank 0
trains an unsharded copy on both ranks' batches: the aligned norms must equal its (rel <= 1e-5).
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from rankstream.schema import decode_event
from rankstream.stream_jobs.core import Engine

pytestmark = pytest.mark.timeout(300)

WORLD = 2
STEPS = 3


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.base = torch.nn.Linear(8, 4)
        self.lora_A = torch.nn.Linear(8, 2, bias=False)
        self.lora_B = torch.nn.Linear(2, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(2, 8, generator=gen), torch.randn(2, 4, generator=gen)


def _norms(model: torch.nn.Module) -> dict[str, float]:
    sq = {"adapter": 0.0, "backbone": 0.0}
    for name, param in model.named_parameters():
        sq["adapter" if name.startswith("lora_") else "backbone"] += float(param.grad.double().pow(2).sum())
    return {
        "grad_norm": math.sqrt(sq["adapter"] + sq["backbone"]),
        "grad_norm_adapter": math.sqrt(sq["adapter"]),
        "grad_norm_backbone": math.sqrt(sq["backbone"]),
    }


def _worker(rank: int, port: int, stage: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    import deepspeed

    from rankstream.producer.events import EventEncoder
    from rankstream.producer.gradparts import deepspeed_norm, deepspeed_parts
    from rankstream.producer.topology import detect_topology

    deepspeed.init_distributed(dist_backend="gloo")
    model = Tiny()
    reference = copy.deepcopy(model)
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_clipping": 1e9,  # the engine computes the global norm every step
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": stage},
    }
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), config=config
    )
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.05)
    encoder = EventEncoder(f"ds{stage}", rank, WORLD, rank, inc=f"i{rank}")
    encoder.topology = detect_topology(engine=engine)
    lines = [encoder.encode("run_start", -1, 1000.0, 0)]
    expected = {}
    for step in range(1, STEPS + 1):
        x, y = _batch(rank, step)
        engine.backward(torch.nn.functional.mse_loss(engine(x), y))
        parts = deepspeed_parts(engine) if stage == 3 else {}
        engine.step()
        metrics = {**parts, **deepspeed_norm(engine)} if stage != 3 else parts
        lines.append(encoder.encode("step", step, 1000.0 + step, step, metrics))
        batches = [_batch(r, step) for r in range(WORLD)]
        total = sum(torch.nn.functional.mse_loss(reference(xb), yb) for xb, yb in batches)
        (total / WORLD).backward()
        expected[step] = _norms(reference)
        ref_opt.step()
        ref_opt.zero_grad()
    Path(out_dir, f"events-{rank}.jsonl").write_bytes(b"\n".join(lines))
    if rank == 0:
        Path(out_dir, "expected.json").write_text(json.dumps(expected))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_grad_norms_from_the_stream_equal_the_unsharded_norms(
    stage: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(port, stage, str(tmp_path)), nprocs=WORLD, join=True)
    events = [
        decode_event(line)
        for r in range(WORLD)
        for line in Path(tmp_path, f"events-{r}.jsonl").read_bytes().split(b"\n")
    ]
    events.sort(key=lambda e: (e["ts"], e["rank"]))
    starts = [e["topology"] for e in events if e["kind"] == "run_start"]
    assert [t["grads"] for t in starts] == ["shard" if stage == 3 else "global"] * WORLD
    engine = Engine()
    out = engine.process_many(events)
    out.extend(engine.finish())
    expected: dict[str, Any] = json.loads(Path(tmp_path, "expected.json").read_text())
    assert [s["step"] for s in out.steps] == list(range(1, STEPS + 1))
    names = ("grad_norm", "grad_norm_adapter", "grad_norm_backbone") if stage == 3 else ("grad_norm",)
    for rec in out.steps:
        for name in names:
            want = expected[str(rec["step"])][name]
            got = rec["metrics"][name]["mean"]
            assert want > 0 and abs(got - want) <= 1e-5 * want, (stage, rec["step"], name, got, want)
        if stage == 3:
            assert rec["grad_parts"] == {"expected": WORLD, "present": WORLD, "exact": True}
