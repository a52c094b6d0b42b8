"""StepTimer measures real data/compute/step time; grad norms split adapter and backbone correctly."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from rankstream.producer.loop import StepTimer
from rankstream.producer.torchstats import grad_norms, is_adapter_param


class Recorder:
    """Stands in for a Reporter: records what StepTimer hands over (no Kafka involved here)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, Any], Any]] = []

    def log(self, step: int, metrics: dict[str, Any] | None = None, *, tags: Any = None) -> None:
        self.calls.append((step, dict(metrics or {}), tags))

    def start(self) -> None:
        pass

    def close(self, timeout: float = 10.0, status: str = "finished") -> None:
        pass


def test_step_timer_measures_data_wait_and_compute() -> None:
    rec = Recorder()
    timer = StepTimer(rec)  # type: ignore[arg-type]
    for step in range(3):
        time.sleep(0.03)  # "data loading" between steps
        with timer.step(step) as s:
            time.sleep(0.02)  # more data loading inside the block
            s.data_done()
            time.sleep(0.04)  # compute
            s.log(loss=1.0, tags={"stage": "warmup"})
    assert [c[0] for c in rec.calls] == [0, 1, 2]
    first, later = rec.calls[0][1], rec.calls[2][1]
    assert first["loss"] == 1.0 and rec.calls[0][2] == {"stage": "warmup"}
    assert first["data_time_s"] >= 0.02  # first step: no previous end, only the in-block wait
    assert later["data_time_s"] >= 0.05
    assert later["compute_time_s"] >= 0.04
    assert later["step_time_s"] >= later["data_time_s"] + later["compute_time_s"] - 1e-9


def test_compute_done_excludes_waiting_and_failed_steps_are_not_reported() -> None:
    rec = Recorder()
    timer = StepTimer(rec)  # type: ignore[arg-type]
    with timer.step(0) as s:
        s.compute_done()
        time.sleep(0.03)  # e.g. waiting for other ranks
    assert rec.calls[0][1]["compute_time_s"] < 0.03 <= rec.calls[0][1]["step_time_s"]
    with pytest.raises(RuntimeError), timer.step(1):
        raise RuntimeError("boom")
    assert len(rec.calls) == 1


def test_adapter_pattern() -> None:
    assert is_adapter_param("base_model.model.layers.0.q_proj.lora_A.default.weight")
    assert is_adapter_param("encoder.adapter.down.weight")
    assert not is_adapter_param("model.layers.0.q_proj.weight")
    assert not is_adapter_param("model.explorer_head.weight")


def test_grad_norms_split_matches_manual_computation() -> None:
    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {
            "backbone": torch.nn.Linear(4, 4),
            "lora_A": torch.nn.Linear(4, 2, bias=False),
            "frozen": torch.nn.Linear(4, 1),
        }
    )
    model["frozen"].requires_grad_(False)
    x = torch.randn(3, 4)
    loss = model["backbone"](x).sum() + model["lora_A"](x).pow(2).sum() + model["frozen"](x).sum()
    loss.backward()
    out = grad_norms(model.named_parameters())
    bb = torch.cat([p.grad.flatten() for p in model["backbone"].parameters()]).norm()
    ad = model["lora_A"].weight.grad.norm()
    assert float(out["grad_norm_backbone"]) == pytest.approx(float(bb), rel=1e-5)
    assert float(out["grad_norm_adapter"]) == pytest.approx(float(ad), rel=1e-5)
    assert float(out["grad_norm"]) == pytest.approx(float((bb**2 + ad**2).sqrt()), rel=1e-5)
    plain = grad_norms([("w", model["backbone"].weight)])
    assert set(plain) == {"grad_norm"}
