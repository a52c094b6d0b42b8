"""What a Hugging Face Trainer computes but never hands to callbacks, read where it is computed.

* The total gradient norm before clipping (what Trainer and ms-swift log as
  ``grad_norm``) lives in a local variable of the training loop; the only place
  it passes through is ``Accelerator.clip_grad_norm_``, whose return value it
  is. :class:`PreClipNorm` wraps that method, so grad_norm is the logged value
  at every step, also when ms-swift drops non-finite gradients right after.
* This rank's loss as the trainer counts it: ``training_step`` returns each
  micro-batch's share of the step loss (after the trainer's own normalisation,
  which ms-swift does outside the model); :func:`tap_training_step` keeps them.
* The precision the model really runs in: the arguments say what was asked
  (ms-swift asks fp16 for a float32 CPU model), autocast and the weights say
  what happens. :class:`PrecisionProbe` looks once, inside the first training
  forward.

Neither syncs the device; a failure here costs a metric, never the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

#: torch.nn.utils.clip_grad_norm_'s epsilon: grads are scaled by min(1, max_norm / (norm + eps)).
_CLIP_EPS = 1e-6

_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


class PreClipNorm:
    """Keeps the last pre-clip total gradient norm (and the ``max_norm`` it was clipped to)."""

    def __init__(self) -> None:
        self._norm: Any = None
        self._max_norm: float | None = None
        self._undo: Callable[[], None] | None = None

    def _record(self, norm: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            max_norm = args[0] if args else kwargs.get("max_norm")
            self._norm = norm.detach() if isinstance(norm, torch.Tensor) else norm
            self._max_norm = float(max_norm) if max_norm is not None else None
        except Exception:  # an odd signature costs the tap, never the step
            self._norm, self._max_norm = None, None

    def install(self, accelerator: Any = None) -> None:
        """Wrap ``accelerator.clip_grad_norm_`` (this trainer's only), or without one the class method of
        ``accelerate.Accelerator`` until :meth:`remove`. The wrapped method is looked up at each call, so a
        framework that patches the class during training (ms-swift's NaN guard) stays in the chain."""
        self.remove()
        if accelerator is not None:
            self._install_on_instance(accelerator)
            return
        try:
            from accelerate import Accelerator
        except Exception:
            return
        original = Accelerator.clip_grad_norm_
        tap = self

        def clip_grad_norm_(acc: Any, parameters: Any, *args: Any, **kwargs: Any) -> Any:
            norm = original(acc, parameters, *args, **kwargs)
            tap._record(norm, args, kwargs)
            return norm

        Accelerator.clip_grad_norm_ = clip_grad_norm_

        def undo() -> None:
            if Accelerator.__dict__.get("clip_grad_norm_") is clip_grad_norm_:
                Accelerator.clip_grad_norm_ = original

        self._undo = undo

    def _install_on_instance(self, accelerator: Any) -> None:
        tap = self

        def clip_grad_norm_(parameters: Any, *args: Any, **kwargs: Any) -> Any:
            norm = type(accelerator).clip_grad_norm_(accelerator, parameters, *args, **kwargs)
            tap._record(norm, args, kwargs)
            return norm

        try:
            accelerator.clip_grad_norm_ = clip_grad_norm_
        except Exception:
            return

        def undo() -> None:
            if vars(accelerator).get("clip_grad_norm_") is clip_grad_norm_:
                del accelerator.clip_grad_norm_

        self._undo = undo

    def remove(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None

    def clear(self) -> None:
        self._norm, self._max_norm = None, None

    def take(self) -> tuple[Any, float | None] | None:
        """``(norm, max_norm)`` seen since the last take, or None."""
        if self._norm is None:
            return None
        out = (self._norm, self._max_norm)
        self.clear()
        return out


def unclip(norms: dict[str, Any], pre_clip: Any, max_norm: float | None) -> dict[str, Any]:
    """``norms`` read after clipping (adapter/backbone split) scaled back to before it.

    Clipping multiplies every gradient by ``min(1, max_norm / (norm + eps))``; dividing by the same
    factor restores each part exactly, shard norms included. A non-finite ``pre_clip`` leaves the parts
    as they are (the framework zeroed or dropped the gradients; ``grad_norm`` carries the news).
    """
    if max_norm is None or not 0.0 < max_norm < math.inf:
        return norms
    scale: Any
    if isinstance(pre_clip, torch.Tensor):
        pre = pre_clip.float()
        factor = (max_norm / (pre + _CLIP_EPS)).clamp(max=1.0)
        scale = torch.where(torch.isfinite(pre) & (factor > 0), 1.0 / factor, torch.ones_like(factor))
    else:
        try:
            pre_f = float(pre_clip)
        except (TypeError, ValueError):
            return norms
        if not math.isfinite(pre_f):
            return norms
        factor_f = min(1.0, max_norm / (pre_f + _CLIP_EPS))
        if factor_f <= 0.0:
            return norms
        scale = 1.0 / factor_f
    out = dict(norms)
    for name in ("grad_norm_adapter", "grad_norm_backbone", "grad_sq", "grad_sq_adapter", "grad_sq_backbone"):
        part = out.get(name)
        if isinstance(part, torch.Tensor):
            factor = scale.to(part.device) if isinstance(scale, torch.Tensor) else scale
            out[name] = part * (factor * factor if name.startswith("grad_sq") else factor)  # parts: squares
    return out


def tap_training_step(trainer: Any, keep: Callable[[Any], None]) -> Callable[[], None] | None:
    """Hand every micro-batch loss ``trainer.training_step`` returns to ``keep``; returns the undo, or None
    when there is no such method. Their sum over a step is the loss the trainer logs for this rank."""
    if trainer is None or not callable(getattr(type(trainer), "training_step", None)):
        return None

    def training_step(*args: Any, **kwargs: Any) -> Any:
        loss = type(trainer).training_step(trainer, *args, **kwargs)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            keep(loss.detach())
        return loss

    try:
        trainer.training_step = training_step
    except Exception:
        return None

    def undo() -> None:
        if vars(trainer).get("training_step") is training_step:
            del trainer.training_step

    return undo


class PrecisionProbe:
    """Finds what the model computes in during its first training forward: the autocast dtype when
    autocast is on there, else the dtype of the trainable weights."""

    def __init__(self) -> None:
        self.found: str | None = None
        self._handle: Any = None

    def install(self, model: Any) -> None:
        """A one-shot pre-hook on the module that owns the first trainable floating parameter: it runs
        inside the forward, under the autocast that accelerate wraps around ``model.forward``."""
        self.remove()
        try:
            for module in model.modules():
                owned = [p for p in module.parameters(recurse=False) if p.requires_grad and p.is_floating_point()]
                if owned:
                    self._handle = module.register_forward_pre_hook(self._probe)
                    return
        except Exception:
            self._handle = None

    def _probe(self, module: Any, inputs: Any) -> None:
        if not module.training or self.found is not None:
            return
        try:
            weight = next(p for p in module.parameters(recurse=False) if p.is_floating_point())
            device = weight.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
            self.found = _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))
        except Exception:
            self.found = None
        self.remove()

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
