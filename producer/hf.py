"""Hugging Face ``Trainer`` integration (also ms-swift and TRL, which train through it)::

    trainer = Trainer(..., callbacks=[RankstreamCallback(meta={"team": "nlp", "project": "chat"})])

ms-swift's ``swift sft`` loads it as a plugin: see :mod:`rankstream.integrations.swift_plugin`.

Per optimizer step and per rank it reports this rank's own loss (HF's
``logs["loss"]`` is averaged over ranks and logging steps; here each
micro-batch's loss is read on this rank: from ``training_step`` when the
callback knows its trainer, else from the model output), the learning rate and the gradient
norm the trainer logs (``grad_norm`` before clipping, also when non-finite; the
adapter (LoRA/PEFT) / backbone split on the same pre-clip scale), data/compute/
step time, CUDA memory, loss_scale under fp16, tags ``precision`` (what the
model runs in) and ``stage`` (warmup/stable). On logging steps it adds what the
trainer logged and it does not measure itself (token_acc, rewards/*, ...) under
the importers' names (:mod:`rankstream.metric_names`). Nothing here syncs the
device: tensors are read by the reporter's background thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

from rankstream.metric_names import SUMMARY_KEYS, map_metrics
from rankstream.producer.gradparts import GradLayout, grad_parts
from rankstream.producer.hf_taps import PrecisionProbe, PreClipNorm, tap_training_step, unclip
from rankstream.producer.reporter import Reporter
from rankstream.producer.topology import callback_layout
from rankstream.producer.torchstats import CallbackState, cuda_memory, grad_norms, is_adapter_param

_clock = time.perf_counter


def _precision(args: Any) -> str:
    """What the arguments ask for; the probe replaces it with what the model runs in."""
    if getattr(args, "bf16", False):
        return "bf16"
    if getattr(args, "fp16", False):
        return "fp16"
    return "fp32"


def _logs_lr_after_step(args: Any, trainer: Any) -> bool:
    """ms-swift logs the scheduler's rate after its step (the next step's); HF Trainer 5.x logs the
    rate the optimizer step used. The first logged step confirms or corrects this guess."""
    return any(obj is not None and type(obj).__module__.split(".", 1)[0] == "swift" for obj in (trainer, args))


def _model_meta(args: Any, model: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"run_name": getattr(args, "run_name", None)}
    if model is not None:
        model_config = getattr(model, "config", None)
        meta["model_name"] = (
            getattr(model, "name_or_path", None) or getattr(model_config, "_name_or_path", None) or None
        )
        archs = getattr(model_config, "architectures", None) or [type(model).__name__]
        meta["model_architecture"] = archs[0]
        peft = getattr(model, "peft_config", None)
        if isinstance(peft, Mapping) and peft:
            task = getattr(next(iter(peft.values())), "task_type", None)
            meta["task_type"] = str(getattr(task, "value", task)) if task is not None else None
    config: dict[str, Any] = {}
    if hasattr(args, "to_dict"):
        config["training_args"] = args.to_dict()  # HF masks hub tokens itself; redaction runs anyway
    if model is not None and hasattr(getattr(model, "config", None), "to_dict"):
        config["model_config"] = model.config.to_dict()
    meta["config"] = config
    return {k: v for k, v in meta.items() if v not in (None, "")}


def _same(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
    except (TypeError, ValueError):
        return False


def _is_train_line(logs: Mapping[str, Any]) -> bool:
    """A training log line (not an eval line, not the end-of-training summary)."""
    return not any(str(k).startswith("eval_") or k in SUMMARY_KEYS for k in logs)


@dataclass
class _HeldStep:
    """A step event kept from on_step_end until the trainer's log of the same step (on_log) adds to it."""

    step: int
    metrics: dict[str, Any]
    tags: dict[str, str]
    lr_used: Any = None  # the rate optimizer.step() used
    lr_next: Any = None  # the scheduler's rate after its step
    extras: dict[str, Any] = field(default_factory=dict)


class RankstreamCallback(CallbackState, TrainerCallback):
    """Publishes every rank's per-step events from a Hugging Face Trainer.

    ``trainer``: the Trainer this callback is added to, when you have it
    (``trainer.add_callback(RankstreamCallback(trainer=trainer))``; ms-swift's plugin passes it). The loss
    is then the one the trainer computes (``training_step``), also when a trainer normalises it outside
    the model (ms-swift, TRL), and the pre-clip gradient norm is read from that trainer alone. Without it
    the loss comes from the model output and the callback wraps ``accelerate.Accelerator.clip_grad_norm_``
    for the duration of training.
    """

    def __init__(
        self,
        reporter: Reporter | None = None,
        *,
        meta: Mapping[str, Any] | None = None,
        grad_norms: bool = True,
        adapter_filter: Callable[[str], bool] = is_adapter_param,
        trainer: Any = None,
        **reporter_kwargs: Any,
    ) -> None:
        CallbackState.__init__(self, reporter, meta, grad_norms, adapter_filter, reporter_kwargs)
        self._trainer = trainer
        self._hook: Any = None
        self._loss_normalized_by_items = False
        self._warmup_steps = 0
        self._loss_multiplier = 1
        self._pre_clip = PreClipNorm()
        self._probe = PrecisionProbe()
        self._lr_after_step = False
        self._held: _HeldStep | None = None
        self._untap_training_step: Callable[[], None] | None = None
        self._layout: GradLayout | None = None

    # ------------------------------------------------------------------ setup

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.reporter is None:
            meta = {**_model_meta(args, model), **self._user_meta}
            topology, self._layout = callback_layout(model)  # FSDP / TP: exact global norms from parts
            self.reporter = Reporter(meta=meta, topology=topology, **self._reporter_kwargs)
        self.reporter.start()
        self._precision = _precision(args)
        self._lr_after_step = _logs_lr_after_step(args, self._trainer)
        try:
            self._warmup_steps = int(args.get_warmup_steps(state.max_steps))
        except Exception:
            self._warmup_steps = int(getattr(args, "warmup_steps", 0) or 0)
        if getattr(args, "average_tokens_across_devices", False) and getattr(args, "world_size", 1) > 1:
            self._loss_multiplier = int(args.world_size)
        if self._untap_training_step is None:
            self._untap_training_step = tap_training_step(self._trainer, self._losses_from_trainer)
        if model is not None and self._hook is None and self._untap_training_step is None:
            self._hook = model.register_forward_hook(self._capture_loss, with_kwargs=True)
        if model is not None:
            self._probe.install(model)
        self._pre_clip.install(getattr(self._trainer, "accelerator", None))
        self._t_end = None

    def _losses_from_trainer(self, loss: torch.Tensor) -> None:
        """training_step's return: this micro-batch's share of the step loss (they add up)."""
        self._losses.append(loss)

    def _capture_loss(self, module, args, kwargs, output) -> None:
        """Forward hook: keep this rank's micro-batch loss (detached, no sync)."""
        if not module.training:
            return
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._losses.append(loss.detach())
            self._loss_normalized_by_items = kwargs.get("num_items_in_batch") is not None

    # ------------------------------------------------------------------ per step

    def on_step_begin(self, args, state, control, **kwargs):
        self._release()
        self._pre_clip.clear()
        self._t_begin = _clock()

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        """Gradients here are unscaled and clipped, right before optimizer.step(); the pre-clip norm was
        taken from clip_grad_norm_ a moment ago."""
        reporter = self.reporter
        if reporter is None or (state.global_step + 1) % reporter.every_k:
            return
        pending = self._pending
        pre_clip = self._pre_clip.take()
        if self._want_grad_norms and model is not None:
            if self._layout is not None:
                norms = grad_parts(model.named_parameters(), self._layout, self._adapter_filter)
            else:
                norms = grad_norms(model.named_parameters(), self._adapter_filter)
            if pre_clip is not None:
                norms = unclip(norms, *pre_clip)
            pending.update(norms)
        if pre_clip is not None and pre_clip[0] is not None:
            pending["grad_norm"] = pre_clip[0]
        if optimizer is not None and getattr(optimizer, "param_groups", None):
            pending["lr"] = optimizer.param_groups[0].get("lr")
        scaler = getattr(optimizer, "scaler", None)
        if scaler is not None and getattr(scaler, "is_enabled", lambda: False)():
            scale = getattr(scaler, "_scale", None)
            if isinstance(scale, torch.Tensor):
                pending["loss_scale"] = scale.detach().clone()  # updated in place by scaler.update()

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        now = _clock()
        reporter = self.reporter
        losses, self._losses = self._losses, []
        metrics, self._pending = self._pending, {}
        begin, prev_end = self._t_begin, self._t_end
        self._t_end = now
        if reporter is None:
            return
        step = state.global_step
        if step % reporter.every_k:
            reporter.log(step)  # keeps the heartbeat's "last completed step" current; thinned out by every_k
            return
        if losses:
            stacked = torch.stack([loss.float() for loss in losses])
            if self._untap_training_step is not None:
                metrics["loss"] = stacked.sum()  # the trainer's shares, already scaled as it logs them
            elif self._loss_normalized_by_items:
                metrics["loss"] = stacked.sum() * self._loss_multiplier
            else:
                metrics["loss"] = stacked.mean()
        lr_used = metrics.pop("lr", None)
        lr_next = None
        if lr_scheduler is not None:
            try:
                lr_next = lr_scheduler.get_last_lr()[0]
            except Exception:
                pass
        if begin is not None:
            metrics["compute_time_s"] = now - begin
            if prev_end is not None:
                metrics["data_time_s"] = max(begin - prev_end, 0.0)
                metrics["step_time_s"] = now - prev_end
            else:
                metrics["step_time_s"] = now - begin
        metrics.update(cuda_memory())
        if self._probe.found:
            self._precision = self._probe.found
        stage = "warmup" if step <= self._warmup_steps else "stable"
        self._held = _HeldStep(step, metrics, {"precision": self._precision, "stage": stage}, lr_used, lr_next)
        if not control.should_log:  # DefaultFlowCallback (earlier in the list) decided already
            self._release()

    def on_log(self, args, state, control, logs=None, **kwargs):
        held = self._held
        if held is None or not logs or held.step != state.global_step or not _is_train_line(logs):
            return
        try:
            extras = map_metrics(logs)
        except Exception:
            extras = {}
        logged_lr = extras.pop("lr", None)
        if logged_lr is not None:
            if _same(logged_lr, held.lr_next) and not _same(logged_lr, held.lr_used):
                self._lr_after_step = True
            elif _same(logged_lr, held.lr_used) and not _same(logged_lr, held.lr_next):
                self._lr_after_step = False
        held.extras = extras
        self._release()

    def _release(self) -> None:
        """Publish the held step: own measurements win over what the trainer logged."""
        held, self._held = self._held, None
        if held is None or self.reporter is None:
            return
        lr = held.lr_next if self._lr_after_step else held.lr_used
        if lr is None:
            lr = held.lr_used if held.lr_used is not None else held.lr_next
        metrics = {**held.extras, **held.metrics}
        if lr is not None:
            metrics["lr"] = lr
        self.reporter.log(held.step, metrics, tags=held.tags)

    # ------------------------------------------------------------------ eval / end

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._release()
        if self.reporter is not None and metrics:
            try:
                named = map_metrics(metrics, eval_line=True)  # drops ms-swift's progress text and speeds
            except Exception:
                named = {}
            if named:
                self.reporter.log_eval(state.global_step, named)
        self._t_end = _clock()  # evaluation time is not the next step's data time

    def on_save(self, args, state, control, **kwargs):
        self._release()
        self._t_end = _clock()

    def on_train_end(self, args, state, control, **kwargs):
        self._release()
        self._pre_clip.remove()
        self._probe.remove()
        if self._untap_training_step is not None:
            self._untap_training_step()
            self._untap_training_step = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.reporter is not None:
            self.reporter.close(status="finished")
