"""Trainer log keys -> rankstream metric names, shared by the importers and the live callbacks.

Hugging Face Trainer, TRL (DPO/GRPO/KTO...), ms-swift and Megatron-swift each
name the same quantity differently (``learning_rate`` vs ``lr``, ``lm loss`` vs
``loss``, ``memory(GiB)``, ``train_speed(iter/s)``); detection rules read the
standard names of DESIGN.md, so every reader of trainer logs maps keys here and
a live run and its imported log end up with the same metric names and units.

Names that are not standard pass through sanitized to ``[0-9A-Za-z_]`` (a
``/`` or a space would need quoting in SQL and dashboards): ``rewards/chosen``
-> ``rewards_chosen``. The module has no dependencies (the producer imports it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

#: Keys whose value is already the standard metric, in its unit.
_STANDARD: Final[dict[str, str]] = {
    "loss": "loss",
    "lm loss": "loss",  # Megatron-swift 3.x (Megatron-LM's reporting key)
    "lm_loss": "loss",
    "learning_rate": "lr",
    "lr": "lr",
    "grad_norm": "grad_norm",
    "grad norm": "grad_norm",  # Megatron-LM's stdout iteration line
    "grad-norm": "grad_norm",  # Megatron-LM's TensorBoard tag
    "learning rate": "lr",  # Megatron-LM's stdout iteration line
    "learning-rate": "lr",  # Megatron-LM's TensorBoard tag
    "loss_scale": "loss_scale",
    "loss scale": "loss_scale",
    "loss-scale": "loss_scale",  # Megatron-LM's TensorBoard tag
    "iteration-time": "step_time_s",  # Megatron-LM's TensorBoard tag (--log-timers-to-tensorboard), seconds
    "train_speed(s/it)": "step_time_s",  # ms-swift >= 3.x: elapsed / steps since start
    "elapsed_time_per_iteration": "step_time_s",  # Megatron-swift 3.x, seconds
    "step_time_s": "step_time_s",
    "tokens_per_s": "tokens_per_s",
    "samples_per_s": "samples_per_s",
}

#: Keys converted on the way: name and a function of the value (``None`` drops it).
_GIB_TO_MB: Final = 1024.0


def _per_second_to_seconds(value: float) -> float | None:
    return 1.0 / value if value > 0 and math.isfinite(value) else None


def _gib_to_mb(value: float) -> float | None:
    return value * _GIB_TO_MB


def _bytes_to_mb(value: float) -> float | None:
    return value / (1024.0 * 1024.0)


def _ms_to_seconds(value: float) -> float | None:
    return value / 1000.0


_CONVERTED: Final = {
    "memory(GiB)": ("mem_peak_mb", _gib_to_mb),  # ms-swift: max reserved CUDA memory, GiB
    "memory_GiB": ("mem_peak_mb", _gib_to_mb),
    "train_speed(iter/s)": ("step_time_s", _per_second_to_seconds),  # ms-swift 3.0-3.2
    # Megatron-LM (megatron/training/training.py training_log): the stdout line in ms, TensorBoard memory in bytes
    "elapsed time per iteration (ms)": ("step_time_s", _ms_to_seconds),
    "mem-max-allocated-bytes": ("mem_peak_mb", _bytes_to_mb),
    "mem-allocated-bytes": ("mem_alloc_mb", _bytes_to_mb),
    "mem-reserved-bytes": ("mem_reserved_mb", _bytes_to_mb),
}

#: Bookkeeping written next to the metrics on each log line: position, clock and progress text.
NOT_METRICS: Final = frozenset(
    {
        "global_step/max_steps",  # ms-swift, Megatron-swift 3.x: "10/200"
        "iteration",  # Megatron-swift 4.x: "10/200"
        "step",  # HF log_history
        "global_step",
        "elapsed_time",
        "remaining_time",
        "percentage",
    }
)

#: Keys of the line HF Trainer logs once at the end of train() (``TrainOutput`` metrics).
SUMMARY_KEYS: Final = frozenset(
    {"train_runtime", "train_loss", "train_samples_per_second", "train_steps_per_second", "total_flos"}
)

_UNSAFE = re.compile(r"[^0-9A-Za-z_]+")
_NONFINITE_TEXT: Final = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}


def sanitize(key: str) -> str:
    """A name that passes through SQL and dashboards unquoted: ``rewards/chosen`` -> ``rewards_chosen``."""
    return _UNSAFE.sub("_", key).strip("_") or "value"


def standard_name(key: str) -> str:
    """The rankstream metric name of a trainer log key (standard name, else the sanitized key).

    ``eval_`` keys keep their prefix and map the rest: Megatron-swift 3.x ``eval_lm loss`` -> ``eval_loss``.
    """
    if key in _STANDARD:
        return _STANDARD[key]
    if key in _CONVERTED:
        return _CONVERTED[key][0]
    if key.startswith("eval_") and _STANDARD.get(key[5:]) == "loss":
        return "eval_loss"
    return sanitize(key)


def is_known_key(key: str) -> bool:
    """Whether ``key`` is a trainer log key this table maps (``loss``, ``learning_rate``, ``memory(GiB)``...)."""
    return key in _STANDARD or key in _CONVERTED


def to_number(value: Any) -> float | None:
    """A log value as a float: numbers, and numbers written as strings (``"2.5"``, ``"nan"``); else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _NONFINITE_TEXT:
            return _NONFINITE_TEXT[text]
        try:
            return float(text)
        except ValueError:
            return None
    return None


def convert(key: str, value: Any) -> tuple[str, float] | None:
    """``(name, value in rankstream units)`` for one log entry, or ``None`` when it is no metric.

    ``memory(GiB)`` -> ``mem_peak_mb`` (x 1024), ``train_speed(iter/s)`` -> ``step_time_s`` (1/x; a speed
    of 0 gives nothing), bookkeeping keys and text values -> ``None``.
    """
    if key in NOT_METRICS:
        return None
    number = to_number(value)
    if number is None:
        return None
    if key in _CONVERTED:
        name, fn = _CONVERTED[key]
        converted = fn(number)
        return None if converted is None else (name, converted)
    name = standard_name(key)
    if name == "step_time_s" and not number > 0:
        return None  # ms-swift writes 0.0 before the first step of a (resumed) run has been timed
    return name, number


def map_metrics(logs: Mapping[str, Any], *, eval_line: bool = False) -> dict[str, float]:
    """Every metric of one trainer log line under its rankstream name.

    On an eval line (``eval_line``) the step time is left out: the trainer's speed there is the
    training average written next to the eval results, not how long the evaluation took.
    """
    out: dict[str, float] = {}
    for key, value in logs.items():
        mapped = convert(str(key), value)
        if mapped is None:
            continue
        name, number = mapped
        if eval_line and name == "step_time_s":
            continue
        out[name] = number
    return out
