"""The HF callback's per-step bookkeeping, driven hook by hook as Trainer / ms-swift call it (no training)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch

from rankstream.producer.events import EventEncoder
from rankstream.producer.hf import RankstreamCallback


class FakeReporter:
    every_k = 1

    def __init__(self) -> None:
        self.steps: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.evals: dict[int, dict[str, Any]] = {}
        self.closed = False

    def start(self) -> None:
        pass

    def log(self, step: int, metrics: Any = None, *, tags: Any = None) -> None:
        assert step not in self.steps, "one event per step"
        self.steps[step] = (dict(metrics or {}), dict(tags or {}))

    def log_eval(self, step: int, metrics: Any = None) -> None:
        self.evals[step] = dict(metrics or {})

    def close(self, status: str = "finished") -> None:
        self.closed = True


class Scheduler:
    """lr 1.0, 0.5, 0.25, ...: halves at each step (so "used" and "after the step" differ)."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer

    def get_last_lr(self) -> list[float]:
        return [self.optimizer.param_groups[0]["lr"]]

    def step(self) -> None:
        self.optimizer.param_groups[0]["lr"] /= 2


class TinyModel(torch.nn.Module):
    """Returns its loss in the output, as HF models do (the callback's forward hook reads it)."""

    def __init__(self) -> None:
        super().__init__()
        self.base = torch.nn.Linear(2, 1)
        self.lora_A = torch.nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": (self.base(x) + self.lora_A(x)).pow(2).mean()}


class Loop:
    """Calls the callback's hooks in Trainer's order for one optimizer step per ``step()``."""

    def __init__(self, callback: RankstreamCallback, args: Any = None) -> None:
        self.cb = callback
        self.args = args or SimpleNamespace(warmup_steps=0, fp16=False, bf16=False)
        self.state = SimpleNamespace(global_step=0, max_steps=10)
        self.model = TinyModel()
        self.optimizer = SimpleNamespace(param_groups=[{"lr": 1.0}])
        self.scheduler = Scheduler(self.optimizer)
        self.cb.on_train_begin(self.args, self.state, SimpleNamespace(), model=self.model)

    def step(self, *, logs: dict[str, Any] | None = None, forward: bool = True) -> None:
        cb, args, state = self.cb, self.args, self.state
        cb.on_step_begin(args, state, SimpleNamespace())
        if forward:
            self.model(torch.ones(1, 2))
        for p in self.model.parameters():
            p.grad = torch.full_like(p, 0.5)
        cb.on_pre_optimizer_step(args, state, SimpleNamespace(), model=self.model, optimizer=self.optimizer)
        self.scheduler.step()
        state.global_step += 1
        control = SimpleNamespace(should_log=logs is not None)
        cb.on_step_end(args, state, control, lr_scheduler=self.scheduler)
        if logs is not None:
            cb.on_log(args, state, control, logs=dict(logs))


def test_logged_extras_are_published_under_the_importers_names_and_own_values_win() -> None:
    reporter = FakeReporter()
    loop = Loop(RankstreamCallback(reporter))
    loop.step(
        logs={
            "loss": 99.0,  # averaged over ranks and logging steps: this rank's own measurement wins
            "grad_norm": 99.0,
            "learning_rate": 1.0,
            "token_acc": 0.25,
            "rewards/chosen": 1.5,
            "epoch": 0.5,
            "global_step/max_steps": "1/10",
        }
    )
    loop.step()
    metrics, tags = reporter.steps[1]
    assert metrics["token_acc"] == 0.25 and metrics["rewards_chosen"] == 1.5 and metrics["epoch"] == 0.5
    assert "global_step/max_steps" not in metrics and "rewards/chosen" not in metrics
    assert float(metrics["grad_norm"]) != 99.0 and float(metrics["loss"]) != 99.0
    assert tags["precision"] == "fp32"
    assert set(reporter.steps[2][0]).isdisjoint({"token_acc", "epoch"})  # a step without a log line


def test_a_logged_value_the_callback_did_not_measure_fills_in() -> None:
    reporter = FakeReporter()
    loop = Loop(RankstreamCallback(reporter))
    loop.step(logs={"loss": 3.0, "learning_rate": 1.0}, forward=False)  # e.g. a loss computed outside the model
    assert reporter.steps[1][0]["loss"] == 3.0


def test_lr_follows_the_convention_the_log_shows() -> None:
    hf = FakeReporter()
    loop = Loop(RankstreamCallback(hf))
    loop.step(logs={"loss": 1.0, "learning_rate": 1.0})  # HF: the rate the step used
    loop.step()
    assert hf.steps[1][0]["lr"] == 1.0 and hf.steps[2][0]["lr"] == 0.5

    swift = FakeReporter()
    loop = Loop(RankstreamCallback(swift))
    loop.step(logs={"loss": 1.0, "learning_rate": 0.5})  # ms-swift: the scheduler's rate after the step
    loop.step()
    assert swift.steps[1][0]["lr"] == 0.5 and swift.steps[2][0]["lr"] == 0.25


def test_swift_arguments_start_with_the_after_step_convention() -> None:
    SwiftArgs = type("SftArguments", (), {"__module__": "swift.arguments", "warmup_steps": 0})
    reporter = FakeReporter()
    loop = Loop(RankstreamCallback(reporter), args=SwiftArgs())
    loop.step()  # nothing logged yet
    assert reporter.steps[1][0]["lr"] == 0.5


def test_nan_pre_clip_norm_is_published_when_the_gradients_are_gone() -> None:
    class Accelerator:
        def clip_grad_norm_(self, parameters, max_norm, norm_type=2):
            return torch.tensor(math.nan)

    trainer = SimpleNamespace(accelerator=Accelerator())
    reporter = FakeReporter()
    cb = RankstreamCallback(reporter, trainer=trainer)
    loop = Loop(cb)
    state = loop.state
    cb.on_step_begin(loop.args, state, SimpleNamespace())
    trainer.accelerator.clip_grad_norm_(loop.model.parameters(), 1.0)
    for p in loop.model.parameters():
        p.grad = None  # ms-swift: "If NaN occurs, ignore weight updates"
    cb.on_pre_optimizer_step(loop.args, state, SimpleNamespace(), model=loop.model, optimizer=loop.optimizer)
    state.global_step = 1
    cb.on_step_end(loop.args, state, SimpleNamespace(should_log=False), lr_scheduler=loop.scheduler)
    metrics = reporter.steps[1][0]
    assert math.isnan(float(metrics["grad_norm"]))
    assert "grad_norm_adapter" not in metrics


def test_eval_metrics_drop_swift_progress_keys_and_count_nothing_invalid() -> None:
    reporter = FakeReporter()
    cb = RankstreamCallback(reporter)
    loop = Loop(cb)
    loop.step()
    metrics = {  # HF's eval metrics after ms-swift's callbacks added their progress keys to the same dict
        "eval_loss": 2.0,
        "eval_token_acc": 0.5,
        "eval_runtime": 0.1,
        "epoch": 0.5,
        "global_step/max_steps": "1/10",
        "elapsed_time": "1s",
        "remaining_time": "9s",
        "train_speed(s/it)": 0.2,
        "memory(GiB)": 1.0,
    }
    cb.on_evaluate(loop.args, loop.state, SimpleNamespace(), metrics=metrics)
    published = reporter.evals[1]
    assert published == {
        "eval_loss": 2.0,
        "eval_token_acc": 0.5,
        "eval_runtime": 0.1,
        "epoch": 0.5,
        "mem_peak_mb": 1024.0,
    }
    encoder = EventEncoder("r", 0, 1, 0)
    encoder.metrics(published)
    assert encoder.dropped_invalid == 0


def test_a_held_step_is_published_even_when_its_log_never_comes() -> None:
    reporter = FakeReporter()
    cb = RankstreamCallback(reporter)
    loop = Loop(cb)
    loop.state.global_step = 0
    cb.on_step_begin(loop.args, loop.state, SimpleNamespace())
    loop.state.global_step = 1
    cb.on_step_end(loop.args, loop.state, SimpleNamespace(should_log=True), lr_scheduler=loop.scheduler)
    assert 1 not in reporter.steps  # waiting for the log line
    cb.on_train_end(loop.args, loop.state, SimpleNamespace())
    assert 1 in reporter.steps and reporter.closed
