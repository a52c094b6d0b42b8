"""Hugging Face ``Trainer`` integration (also ms-swift, which trains through HF's Trainer)::

    trainer = Trainer(..., callbacks=[RankstreamCallback(meta={"team": "nlp", "project": "chat"})])

Per optimizer step and per rank it reports this rank's own loss (HF's
``logs["loss"]`` is averaged over ranks and logging steps; here a forward hook
reads each micro-batch's loss on this rank), lr, grad norm split into adapter
(LoRA/PEFT) and backbone norms after unscaling and clipping, data/compute/step
time, CUDA memory, loss_scale under fp16, and tags ``precision`` and ``stage``
(warmup/stable). Nothing here syncs the device: tensors are read by the
reporter's background thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import TrainerCallback

from rankstream.producer.reporter import Reporter
from rankstream.producer.torchstats import CallbackState, cuda_memory, grad_norms, is_adapter_param

_clock = time.perf_counter


def _precision(args: Any) -> str:
    if getattr(args, "bf16", False):
        return "bf16"
    if getattr(args, "fp16", False):
        return "fp16"
    return "fp32"


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


class RankstreamCallback(CallbackState, TrainerCallback):
    """Publishes every rank's per-step events from a Hugging Face Trainer."""

    def __init__(
        self,
        reporter: Reporter | None = None,
        *,
        meta: Mapping[str, Any] | None = None,
        grad_norms: bool = True,
        adapter_filter: Callable[[str], bool] = is_adapter_param,
        **reporter_kwargs: Any,
    ) -> None:
        CallbackState.__init__(self, reporter, meta, grad_norms, adapter_filter, reporter_kwargs)
        self._hook: Any = None
        self._loss_normalized_by_items = False
        self._warmup_steps = 0
        self._loss_multiplier = 1

    # ------------------------------------------------------------------ setup

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.reporter is None:
            meta = {**_model_meta(args, model), **self._user_meta}
            self.reporter = Reporter(meta=meta, **self._reporter_kwargs)
        self.reporter.start()
        self._precision = _precision(args)
        try:
            self._warmup_steps = int(args.get_warmup_steps(state.max_steps))
        except Exception:
            self._warmup_steps = int(getattr(args, "warmup_steps", 0) or 0)
        if getattr(args, "average_tokens_across_devices", False) and getattr(args, "world_size", 1) > 1:
            self._loss_multiplier = int(args.world_size)
        if model is not None and self._hook is None:
            self._hook = model.register_forward_hook(self._capture_loss, with_kwargs=True)
        self._t_end = None

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
        self._t_begin = _clock()

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        """Gradients here are unscaled and clipped, right before optimizer.step()."""
        reporter = self.reporter
        if reporter is None or (state.global_step + 1) % reporter.every_k:
            return
        pending = self._pending
        if self._want_grad_norms and model is not None:
            pending.update(grad_norms(model.named_parameters(), self._adapter_filter))
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
            if self._loss_normalized_by_items:
                metrics["loss"] = stacked.sum() * self._loss_multiplier
            else:
                metrics["loss"] = stacked.mean()
        if "lr" not in metrics and lr_scheduler is not None:
            try:
                metrics["lr"] = lr_scheduler.get_last_lr()[0]
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
        stage = "warmup" if step <= self._warmup_steps else "stable"
        reporter.log(step, metrics, tags={"precision": self._precision, "stage": stage})

    # ------------------------------------------------------------------ eval / end

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.reporter is not None and metrics:
            self.reporter.log_eval(state.global_step, {k: v for k, v in metrics.items() if k != "epoch"})
        self._t_end = _clock()  # evaluation time is not the next step's data time

    def on_save(self, args, state, control, **kwargs):
        self._t_end = _clock()

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.reporter is not None:
            self.reporter.close(status="finished")
