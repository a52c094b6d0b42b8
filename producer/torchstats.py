"""Per-rank numbers shared by the framework callbacks: gradient norms split adapter/backbone, CUDA memory.

Everything returns tensors or host-side counters without a device sync: the
norms are GPU kernels whose results the reporter's background thread reads.
torch is imported lazily so the producer core never depends on it.

``mem_peak_mb`` is the peak of the *interval* since this rank's previous
reported event, not since the process started (a process-lifetime peak never
comes down, so one transient spike would read as memory pressure for the rest
of the run). It is an :class:`IntervalPeak`: the reporter's background thread
converts it like any tensor, and that conversion reads
``torch.cuda.max_memory_allocated`` and resets it with
``torch.cuda.reset_peak_memory_stats`` (allocator counters on the host, no
device sync, never on the training thread). Steps thinned out by ``every_k``
or the rate limit are never converted, so their peaks count toward the next
reported step: every peak lands in some reported interval.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

# Parameter-name fragments used by PEFT methods (LoRA, IA3, prompt/prefix tuning, ...) and adapters.
ADAPTER_PATTERN = re.compile(
    r"(^|\.)(lora_|lora\.|ia3_|vera_|boft_|oft_|adalora|adapter|modules_to_save|prompt_encoder|prefix_encoder)",
    re.IGNORECASE,
)


class CallbackState:
    """State both framework callbacks keep (HF and Lightning differ only in their hooks)."""

    def __init__(
        self,
        reporter: Any,
        meta: Any,
        grad_norms: bool,
        adapter_filter: Callable[[str], bool],
        reporter_kwargs: dict[str, Any],
    ) -> None:
        self.reporter = reporter
        self._user_meta = dict(meta or {})
        self._want_grad_norms = grad_norms
        self._adapter_filter = adapter_filter
        self._reporter_kwargs = reporter_kwargs
        self._losses: list[Any] = []  # this rank's micro-batch losses of the current optimizer step
        self._pending: dict[str, Any] = {}  # metrics gathered for the step being reported
        self._t_begin: float | None = None
        self._t_end: float | None = None
        self._precision = "fp32"


def is_adapter_param(name: str) -> bool:
    """True for parameters that belong to an adapter (LoRA/PEFT) rather than the backbone."""
    return bool(ADAPTER_PATTERN.search(name))


def _sq_norm(grads: list[Any]) -> Any:
    """Sum of squared L2 norms of ``grads`` (same device), as a 0-d float32 tensor."""
    import torch

    by_group: dict[tuple[Any, Any], list[Any]] = {}
    for g in grads:
        by_group.setdefault((g.device, g.dtype), []).append(g)
    total = None
    for group in by_group.values():
        norms: Sequence[Any]
        try:
            norms = torch._foreach_norm(group, 2.0)
        except Exception:  # older torch / exotic tensor types
            norms = [torch.linalg.vector_norm(g, 2.0) for g in group]
        part = torch.stack([n.float() for n in norms]).pow(2).sum()
        total = part if total is None else total + part.to(total.device, non_blocking=True)
    return total


def grad_norms(
    named_parameters: Iterable[tuple[str, Any]],
    adapter_filter: Callable[[str], bool] = is_adapter_param,
) -> dict[str, Any]:
    """``grad_norm``, and when adapters are present ``grad_norm_adapter`` / ``grad_norm_backbone`` (tensors).

    Only trainable parameters with a gradient count. Under FSDP/ZeRO these are
    this rank's shard norms; with DeepSpeed (gradients held by the engine) the
    result is empty.
    """
    adapter: list[Any] = []
    backbone: list[Any] = []
    for name, param in named_parameters:
        grad = getattr(param, "grad", None)
        if grad is None or not getattr(param, "requires_grad", False):
            continue
        if getattr(grad, "is_sparse", False):
            grad = grad.coalesce()._values()
        (adapter if adapter_filter(name) else backbone).append(grad.detach())
    out: dict[str, Any] = {}
    sq_a = _sq_norm(adapter) if adapter else None
    sq_b = _sq_norm(backbone) if backbone else None
    if sq_a is not None:
        out["grad_norm_adapter"] = sq_a.sqrt()
        if sq_b is not None:
            out["grad_norm_backbone"] = sq_b.sqrt()
            out["grad_norm"] = (sq_a + sq_b.to(sq_a.device, non_blocking=True)).sqrt()
        else:
            out["grad_norm_backbone"] = 0.0  # adapters train alone: the backbone is frozen
            out["grad_norm"] = out["grad_norm_adapter"]
    elif sq_b is not None:
        out["grad_norm"] = sq_b.sqrt()
    return out


_total_mb_cache: dict[int, float] = {}
_MB = 1024.0 * 1024.0
_peak_lock = threading.Lock()  # one read-and-reset at a time (two reporters' threads in one process)


class IntervalPeak:
    """``mem_peak_mb`` of the interval ending when this value is converted (on the background thread).

    ``float()`` returns the allocator's peak since the previous conversion (at
    least the memory allocated when the step was reported) and resets the peak
    counter, so the next interval starts from the memory in use then.
    """

    __slots__ = ("floor_mb", "index")

    def __init__(self, index: int, floor_mb: float) -> None:
        self.index = index
        self.floor_mb = floor_mb

    def __float__(self) -> float:
        torch = sys.modules.get("torch")
        if torch is None:
            return self.floor_mb
        with _peak_lock:
            peak = torch.cuda.max_memory_allocated(self.index) / _MB
            torch.cuda.reset_peak_memory_stats(self.index)
        return max(peak, self.floor_mb)

    def __repr__(self) -> str:
        return f"IntervalPeak(device={self.index}, floor_mb={self.floor_mb:.1f})"


def cuda_memory(device: Any = None, interval_peak: bool = True) -> dict[str, Any]:
    """Allocator counters of this rank's GPU in MB (host-side reads, no sync); empty without CUDA.

    ``mem_peak_mb`` is an :class:`IntervalPeak` (see the module doc); with
    ``interval_peak=False`` it is the process-lifetime peak, read now, and the
    counter is left alone (for code of your own that reads it).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return {}
        index = torch.cuda.current_device() if device is None else torch.device(device).index
        if index is None:
            index = torch.cuda.current_device()
        mb = _MB
        total = _total_mb_cache.get(index)
        if total is None:
            total = _total_mb_cache[index] = torch.cuda.get_device_properties(index).total_memory / mb
        allocated = torch.cuda.memory_allocated(index) / mb
        peak: Any = IntervalPeak(index, allocated)
        if not interval_peak:
            peak = torch.cuda.max_memory_allocated(index) / mb
        return {
            "mem_alloc_mb": allocated,
            "mem_reserved_mb": torch.cuda.memory_reserved(index) / mb,
            "mem_peak_mb": peak,
            "mem_total_mb": total,
        }
    except Exception:
        return {}
