"""Megatron-LM's stdout lines: the iteration line of ``training_log`` and the validation lines.

Read in NVIDIA/Megatron-LM ``megatron/training/training.py`` (main at d98e8a6; the same fields, without the
time stamp, in the 2023 releases), printed by the last rank (``print_rank_last``)::

     [2025-06-01 10:15:00.123456] iteration      100/  500000 | consumed samples:        51200 |
     elapsed time per iteration (ms): 1234.5 | learning rate: 1.500000E-04 | global batch size:   512 |
     lm loss: 6.543210E+00 | loss scale: 1.0 | grad norm: 1.234 | number of skipped iterations:   0 |
     number of nan iterations:   0 |

(one line), and ``evaluate_and_print_results``, between two lines of dashes::

     validation loss at iteration 100 on validation set | lm loss value: 6.6E+00 | lm loss PPL: 7.3E+02 |

``pretrain`` marks each process start with ``[after megatron is initialized] datetime: ...``
(``print_datetime``) and a normal end of ``train()`` with ``[after training is done] datetime: ...`` (the
``--exit-interval`` / ``--exit-duration-in-mins`` / signal exits call ``sys.exit`` before it).

Values are Python formats: ``{:.6E}`` writes a NaN as ``NAN``, ``{:.3f}`` as ``nan``. A loss is printed only
``if avg >= 0.0``, so an interval whose average loss is NaN prints **no** loss at all (a cross-entropy is
never negative): a line without a loss that earlier lines had is read as a NaN loss.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from rankstream.metric_names import to_number

_STAMP = re.compile(r"\[(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?)\]")
_ITERATION = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_VALIDATION = re.compile(
    r"\bvalidation(?:-(?P<set>\S+))? loss at iteration (?P<iteration>\d+)(?P<where> on (?:validation|test) set)? \|"
)
#: The iteration line's names that differ from the TensorBoard tag of the same value (so both import alike).
_RENAMED = {
    "global batch size": "batch_size",
    "number of skipped iterations": "skipped_iterations",
    "number of nan iterations": "nan_iterations",
    "throughput per GPU (TFLOP/s/GPU)": "throughput",
    "consumed samples": "consumed_samples",
}
LOSS_KEYS = frozenset({"lm loss"})
_MARKS = {"after megatron is initialized": "start", "after training is done": "done"}
_MARK = re.compile(r"\[(after megatron is initialized|after training is done)\] datetime:")


@dataclass
class MegatronLine:
    kind: str  # "train" or "eval"
    iteration: int
    values: dict[str, Any]
    stamp: float | None  # unix seconds of the line's own time stamp, when it has one
    lineno: int = 0


def _stamp(text: str, tz: tzinfo | None) -> float | None:
    found = _STAMP.search(text)
    if not found:
        return None
    when = datetime.fromisoformat(found.group(1))
    return when.replace(tzinfo=tz).timestamp() if tz is not None else when.timestamp()


def _fields(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in text.split("|"):
        key, sep, value = part.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            continue
        number = to_number(value)
        if number is not None:
            out[_RENAMED.get(key, key)] = number
    return out


def parse_megatron_line(text: str, tz: tzinfo | None = None) -> MegatronLine | None:
    """The iteration or validation line in ``text``, else ``None``. The time stamp has no zone (Megatron
    prints ``datetime.now()``): it is read in ``tz``, the local zone when ``None``."""
    it = _ITERATION.search(text)
    if it:
        return MegatronLine("train", int(it.group(1)), _fields(text[it.end() :]), _stamp(text, tz))
    val = _VALIDATION.search(text)
    if val and "test set" not in (val["where"] or ""):
        suffix = f"_{val['set']}" if val["set"] else ""
        values: dict[str, Any] = {}
        for key, number in _fields(text[val.end() :]).items():
            if key.endswith(" value"):
                values[f"eval_{key[: -len(' value')]}{suffix}"] = number
            elif key.endswith(" PPL"):
                values[f"eval_{key[: -len(' PPL')]}{suffix}_ppl"] = number
        return MegatronLine("eval", int(val["iteration"]), values, _stamp(text, tz))
    return None


def megatron_mark(text: str) -> str | None:
    """``start`` for a process start's line, ``done`` for a normal end of training, else ``None``."""
    found = _MARK.search(text) if "datetime:" in text else None
    return _MARKS[found.group(1)] if found else None


def fill_missing_losses(lines: list[MegatronLine]) -> None:
    """A training line without a loss key that an earlier line had: the interval's average was NaN."""
    seen: set[str] = set()
    for line in lines:
        if line.kind != "train":
            continue
        for key in seen - line.values.keys():
            line.values[key] = math.nan
        seen |= LOSS_KEYS & line.values.keys()
