"""What the HF callback reads from inside the trainer: the pre-clip norm, training_step's loss, precision."""

from __future__ import annotations

import math

import pytest
import torch

from rankstream.producer.hf_taps import PrecisionProbe, PreClipNorm, tap_training_step, unclip
from rankstream.producer.torchstats import grad_norms


def _model_with_grads(scale: float = 10.0) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[1].lora_A = torch.nn.Linear(4, 2)  # an adapter-named parameter next to the backbone
    for p in model.parameters():
        p.grad = torch.randn_like(p) * scale
    return model


@pytest.mark.parametrize("as_float", [False, True])
def test_unclip_restores_the_split_norms_to_the_pre_clip_scale(as_float: bool) -> None:
    model = _model_with_grads()
    before = grad_norms(model.named_parameters())
    pre = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    after = grad_norms(model.named_parameters())
    assert float(after["grad_norm"]) == pytest.approx(1.0, rel=1e-4)  # it was clipped
    restored = unclip(after, float(pre) if as_float else pre, 1.0)
    for name in ("grad_norm_adapter", "grad_norm_backbone"):
        assert float(restored[name]) == pytest.approx(float(before[name]), rel=1e-5)
        assert float(restored[name]) > float(after[name])


def test_unclip_leaves_unclipped_and_non_finite_norms_alone() -> None:
    model = _model_with_grads(scale=1e-3)
    norms = grad_norms(model.named_parameters())
    small = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)  # below max_norm: no clipping
    assert float(unclip(norms, small, 1.0)["grad_norm_adapter"]) == pytest.approx(float(norms["grad_norm_adapter"]))
    for pre in (torch.tensor(math.nan), torch.tensor(math.inf), math.nan, math.inf):
        out = unclip(norms, pre, 1.0)
        assert float(out["grad_norm_adapter"]) == pytest.approx(float(norms["grad_norm_adapter"]))
    assert unclip(norms, torch.tensor(50.0), math.inf) is norms  # Trainer's "norm only" call
    assert unclip(norms, torch.tensor(50.0), None) is norms


class FakeAccelerator:
    calls = 0

    def clip_grad_norm_(self, parameters, max_norm, norm_type=2):
        FakeAccelerator.calls += 1
        return torch.tensor(7.0)


def test_pre_clip_norm_on_an_instance_sees_the_return_value_and_follows_class_patches() -> None:
    acc = FakeAccelerator()
    other = FakeAccelerator()
    tap = PreClipNorm()
    tap.install(acc)
    assert float(acc.clip_grad_norm_([], 1.0)) == 7.0
    norm, max_norm = tap.take()
    assert float(norm) == 7.0 and max_norm == 1.0
    assert tap.take() is None  # taken once
    other.clip_grad_norm_([], max_norm=2.0)
    assert tap.take() is None  # another trainer's accelerator is not watched

    original = FakeAccelerator.clip_grad_norm_

    def nan_guard(self, parameters, *args, **kwargs):  # what ms-swift patches in during train()
        return torch.tensor(math.nan)

    FakeAccelerator.clip_grad_norm_ = nan_guard  # type: ignore[method-assign]
    try:
        acc.clip_grad_norm_([], max_norm=3.0)
        norm, max_norm = tap.take()
        assert math.isnan(float(norm)) and max_norm == 3.0
    finally:
        FakeAccelerator.clip_grad_norm_ = original  # type: ignore[method-assign]
    tap.remove()
    assert "clip_grad_norm_" not in vars(acc)


def test_pre_clip_norm_without_a_trainer_wraps_accelerate_for_the_run_only() -> None:
    from accelerate import Accelerator

    original = Accelerator.clip_grad_norm_
    tap = PreClipNorm()
    tap.install()
    try:
        assert Accelerator.clip_grad_norm_ is not original
    finally:
        tap.remove()
    assert Accelerator.clip_grad_norm_ is original

    tap.install()
    wrapped = Accelerator.clip_grad_norm_

    def someone_elses(self, parameters, *args, **kwargs):
        return wrapped(self, parameters, *args, **kwargs)

    Accelerator.clip_grad_norm_ = someone_elses  # type: ignore[method-assign]
    try:
        tap.remove()  # not ours on top any more: left in place
        assert Accelerator.clip_grad_norm_ is someone_elses
    finally:
        Accelerator.clip_grad_norm_ = original  # type: ignore[method-assign]


def test_training_step_tap_keeps_each_micro_batch_loss() -> None:
    class Trainer:
        def training_step(self, model, inputs, num_items_in_batch=None):
            return torch.tensor(float(inputs), requires_grad=True) * 1.0

    trainer = Trainer()
    kept: list[torch.Tensor] = []
    undo = tap_training_step(trainer, kept.append)
    assert undo is not None
    assert float(trainer.training_step(None, 1.5).detach()) == 1.5
    trainer.training_step(None, 2.0)
    assert [float(x) for x in kept] == [1.5, 2.0] and not any(x.requires_grad for x in kept)
    undo()
    trainer.training_step(None, 3.0)
    assert len(kept) == 2
    assert tap_training_step(None, kept.append) is None


@pytest.mark.parametrize(
    ("dtype", "autocast", "expected"),
    [
        (torch.float32, None, "fp32"),
        (torch.bfloat16, None, "bf16"),
        (torch.float32, torch.bfloat16, "bf16"),
    ],
)
def test_precision_probe_reads_what_the_forward_runs_in(dtype, autocast, expected) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)).to(dtype)
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    probe = PrecisionProbe()
    probe.install(model)
    model.eval()
    model(torch.zeros(1, 4, dtype=dtype))
    assert probe.found is None  # evaluation forwards do not count
    model.train()
    if autocast is None:
        model(torch.zeros(1, 4, dtype=dtype))
    else:
        with torch.autocast("cpu", dtype=autocast):
            model(torch.zeros(1, 4, dtype=dtype))
    assert probe.found == expected
    assert not model[1]._forward_pre_hooks  # one look, then gone
