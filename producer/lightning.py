"""PyTorch Lightning integration::

    trainer = L.Trainer(..., callbacks=[RankstreamLightningCallback(meta={"team": "vision"})])

Per optimizer step and per rank: this rank's loss (as returned by
``training_step``, averaged over accumulated micro-batches), lr, grad norms
split adapter/backbone (after AMP unscaling, before Lightning's clipping),
data/compute/step time, CUDA memory, loss_scale under 16-bit AMP, and the
``precision`` tag. Validation metrics go out as ``eval`` events. No device
sync: tensors are read by the reporter's background thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from rankstream.producer.reporter import Reporter
from rankstream.producer.torchstats import CallbackState, cuda_memory, grad_norms, is_adapter_param

_clock = time.perf_counter


def _precision_tag(precision: Any) -> str:
    text = str(precision)
    if "bf16" in text:
        return "bf16"
    if text.startswith("16") or "fp16" in text:
        return "fp16"
    if text.startswith("64"):
        return "fp64"
    if "transformer-engine" in text or "fp8" in text:
        return "fp8"
    return "fp32"


def _loss_of(outputs: Any) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        return outputs.get("loss")
    return None


class RankstreamLightningCallback(CallbackState, Callback):
    """Publishes every rank's per-step events from a Lightning Trainer."""

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
        self._last_global_step = 0

    # ------------------------------------------------------------------ setup

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.reporter is not None:
            return
        hparams = dict(getattr(pl_module, "hparams", {}) or {})
        meta = {
            "model_name": type(pl_module).__name__,
            "model_architecture": type(pl_module).__name__,
            "config": {"hparams": hparams, "max_steps": trainer.max_steps, "max_epochs": trainer.max_epochs},
            **self._user_meta,
        }
        kwargs = {"rank": trainer.global_rank, "world_size": trainer.world_size, "local_rank": trainer.local_rank}
        kwargs.update(self._reporter_kwargs)
        self.reporter = Reporter(meta=meta, **kwargs)

    def on_train_start(self, trainer, pl_module) -> None:
        self._precision = _precision_tag(getattr(trainer, "precision", "32-true"))
        self._last_global_step = trainer.global_step
        self._t_end = None
        if self.reporter is not None:
            self.reporter.start()

    # ------------------------------------------------------------------ per step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t_begin is None:  # first micro-batch of this optimizer step
            self._t_begin = _clock()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        reporter = self.reporter
        if reporter is None or (trainer.global_step + 1) % reporter.every_k:
            return
        pending = self._pending
        if self._want_grad_norms:
            pending.update(grad_norms(pl_module.named_parameters(), self._adapter_filter))
        groups = getattr(optimizer, "param_groups", None)
        if groups:
            pending["lr"] = groups[0].get("lr")
        plugin = getattr(trainer, "precision_plugin", None) or getattr(trainer.strategy, "precision_plugin", None)
        scaler = getattr(plugin, "scaler", None)
        scale = getattr(scaler, "_scale", None)
        if isinstance(scale, torch.Tensor):
            pending["loss_scale"] = scale.detach().clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = _loss_of(outputs)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._losses.append(loss.detach())
        if trainer.global_step == self._last_global_step:
            return  # still accumulating gradients: not a completed optimizer step
        self._last_global_step = trainer.global_step
        now = _clock()
        reporter = self.reporter
        losses, self._losses = self._losses, []
        metrics, self._pending = self._pending, {}
        begin, prev_end = self._t_begin, self._t_end
        self._t_begin, self._t_end = None, now
        if reporter is None:
            return
        step = trainer.global_step
        if step % reporter.every_k:
            reporter.log(step)
            return
        if losses:
            metrics["loss"] = torch.stack([x.float() for x in losses]).mean()
        if begin is not None:
            metrics["compute_time_s"] = now - begin
            if prev_end is not None:
                metrics["data_time_s"] = max(begin - prev_end, 0.0)
                metrics["step_time_s"] = now - prev_end
            else:
                metrics["step_time_s"] = now - begin
        metrics.update(cuda_memory())
        reporter.log(step, metrics, tags={"precision": self._precision})

    # ------------------------------------------------------------------ eval / end

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.reporter is not None and not trainer.sanity_checking:
            values = {k: v for k, v in trainer.callback_metrics.items() if "val" in k}
            if values:
                self.reporter.log_eval(trainer.global_step, values)
        self._t_end = _clock()  # validation time is not the next step's data time

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.reporter is not None:
            self.reporter.close(status="finished")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.reporter is not None:
            self.reporter.close(status="failed", reason=type(exception).__name__)
