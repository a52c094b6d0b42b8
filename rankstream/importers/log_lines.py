"""Trainer log entries (HF ``log_history`` items, ms-swift / Megatron-swift ``logging.jsonl`` lines) -> events.

Both files hold the same dicts: HF ``Trainer.log`` appends a copy of each log
with ``step`` to ``state.log_history`` and hands the dict itself to the callbacks,
where ms-swift adds its own keys and appends it to ``logging.jsonl``
(``swift/trainers/patcher.py``, ``add_train_message``); Megatron-swift writes the
same shape from its own loop. So one reading serves every format:

* an entry is a *training* line, an *eval* line (``eval_*`` keys), the *summary*
  HF logs once at the end of ``train()`` (``train_runtime``, ``train_loss``...) or
  ms-swift's *final state* line (``last_model_checkpoint``, ``log_history``...,
  written in a ``finally:``); only the first two are steps, the other two are
  kept on ``run_end``;
* the step is ``global_step/max_steps`` / ``iteration`` (``"10/200"``) or ``step``;
  an eval line without one belongs to the last training step;
* time comes from ``elapsed_time`` (a launch that starts again from 0 continues
  the clock), else from ``step`` x (``train_runtime`` / steps); with the file's
  modification time as the end of the run, the start is that minus the run length;
* ``loss_scale`` is kept only when it ever differs from 1.0: Megatron writes 1.0
  for bf16/fp32 runs, and a loss scale makes the detectors treat the run as fp16.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rankstream.importers.events import EventBuilder, ImportResult
from rankstream.metric_names import SUMMARY_KEYS, map_metrics, to_number

EntryKind = Literal["train", "eval", "summary", "state"]

#: Keys only ms-swift's final line (``SwiftSft._save_trainer_state`` / Megatron ``run``) writes.
STATE_KEYS = frozenset({"log_history", "last_model_checkpoint", "best_model_checkpoint", "model_parameter_info"})
_STEP_KEYS = ("global_step/max_steps", "iteration", "step", "global_step")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])", re.IGNORECASE)
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_MEGATRON_KEYS = frozenset({"iteration", "lm loss", "elapsed_time_per_iteration", "consumed_samples"})


def parse_duration(text: str) -> float | None:
    """ms-swift durations such as "4s", "35m 7s", "1h 2m 3s", "1d 2h" or "1:02:03" in seconds."""
    text = text.strip()
    if not text:
        return None
    if ":" in text:
        try:
            parts = [float(p) for p in text.split(":")]
        except ValueError:
            return None
        seconds = 0.0
        for p in parts:
            seconds = seconds * 60.0 + p
        return seconds
    units: list[tuple[str, str]] = _DURATION_PART.findall(text)
    if not units:
        return None
    return sum(float(n) * _UNIT_S[u.lower()] for n, u in units)


def entry_kind(obj: Mapping[str, Any]) -> EntryKind:
    if any(k in obj for k in STATE_KEYS):
        return "state"
    if any(k in obj for k in SUMMARY_KEYS):
        return "summary"
    if any(str(k).startswith("eval_") for k in obj):
        return "eval"
    return "train"


def logged_step(obj: Mapping[str, Any]) -> int | None:
    """The optimizer step an entry names: ``"10/200"`` forms first, then ``step`` / ``global_step``."""
    for key in _STEP_KEYS:
        value = obj.get(key)
        if isinstance(value, str):
            value = value.split("/", 1)[0].strip()
            if value.isdigit():
                return int(value)
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        elif isinstance(value, float) and value.is_integer() and value >= 0:
            return int(value)
    return None


def _elapsed(obj: Mapping[str, Any]) -> float | None:
    value = obj.get("elapsed_time")
    if isinstance(value, str):
        parsed = parse_duration(value)
        return parsed if parsed is not None else to_number(value)
    return to_number(value)


@dataclass
class _Logged:
    kind: Literal["step", "eval"]
    step: int
    seconds: float
    metrics: dict[str, float]
    launch: int = 0  # 0 for the first launch; a relaunch appended to the same file restarts the elapsed clock


@dataclass
class _Reading:
    """One pass over the entries: what becomes events, and what goes on ``run_end``."""

    logged: list[_Logged] = field(default_factory=list)
    end_metrics: dict[str, float] = field(default_factory=dict)
    end_step: int | None = None
    runtime: float | None = None
    end_elapsed: float = 0.0
    errors: list[str] = field(default_factory=list)
    #: Which end lines the log holds: the train() summary, the final state line (written in a ``finally:``).
    summary_seen: bool = False
    state_seen: bool = False


def _read_end(obj: Mapping[str, Any], kind: EntryKind, reading: _Reading) -> None:
    """The summary and final state lines: their numbers go on ``run_end``."""
    if kind == "summary":
        reading.summary_seen = True
        reading.end_metrics.update(map_metrics(obj, eval_line=True))
        runtime = to_number(obj.get("train_runtime"))
        if runtime is not None and math.isfinite(runtime) and runtime > 0:
            reading.runtime = runtime
    else:
        reading.state_seen = True
        best = to_number(obj.get("best_metric"))
        if best is not None:
            reading.end_metrics["best_metric"] = best
        memory = to_number(obj.get("memory"))  # ms-swift: max reserved memory, GiB
        if memory is not None and memory > 0:
            reading.end_metrics["mem_peak_mb"] = memory * 1024.0
    step = logged_step(obj)
    if step is not None:
        reading.end_step = step
    elapsed = _elapsed(obj)
    if elapsed is not None and math.isfinite(elapsed):
        reading.end_elapsed = max(reading.end_elapsed, elapsed)


def read_entries(
    entries: Sequence[tuple[str, Any]],
    *,
    require_step: bool,
    launches: Sequence[int] | None = None,
    launch_on_step_back: bool = False,
) -> _Reading:
    """Classify, number and time every entry (``(where, obj)``, where names it in error lines).

    A new launch starts where the elapsed clock starts again; ``launch_on_step_back`` also starts one where a
    training step is not after the previous one (a resume repeats steps; for logs whose clock is absolute),
    and ``launches`` (one number per entry) gives them outright (a TensorBoard event file per launch).
    """
    reading = _Reading()
    pending: list[tuple[str, EntryKind, Mapping[str, Any], int | None, float | None, int | None]] = []
    for index, (where, obj) in enumerate(entries):
        if not isinstance(obj, dict):
            reading.errors.append(f"{where}: expected a JSON object, got {type(obj).__name__}")
            continue
        kind = entry_kind(obj)
        if kind in ("summary", "state"):
            _read_end(obj, kind, reading)
            continue
        step = logged_step(obj)
        if step is None and require_step:
            reading.errors.append(f"{where}: missing or invalid 'step'")
            continue
        pending.append((where, kind, obj, step, _elapsed(obj), None if launches is None else launches[index]))
    timed = any(p[4] is not None for p in pending)
    last_step = 0
    sec_per_step = 1.0
    if reading.runtime is not None:
        final = reading.end_step or max((p[3] for p in pending if p[3] is not None), default=0)
        if final > 0:
            sec_per_step = reading.runtime / final
    offset = previous_elapsed = seconds = 0.0
    launch = 0
    seen_train = False
    for where, kind, obj, step, elapsed, given_launch in pending:
        stepped_back = False
        if given_launch is not None:
            launch = given_launch
        elif launch_on_step_back and kind == "train" and seen_train and step is not None and step <= last_step:
            launch += 1
            stepped_back = True
        if step is None:
            step = last_step if kind == "eval" else last_step + 1
        if elapsed is not None:
            if elapsed < previous_elapsed - 1.0:  # a new launch appended to the same file: its clock restarts
                offset += previous_elapsed
                if given_launch is None and not stepped_back:
                    launch += 1
            previous_elapsed = elapsed
            seconds = offset + elapsed
        elif not timed:
            seconds = step * sec_per_step
        metrics = map_metrics(obj, eval_line=kind == "eval")
        if "lr" in metrics and not math.isfinite(metrics["lr"]):
            del metrics["lr"]
        if not metrics:
            reading.errors.append(f"{where}: no numeric metrics")
            continue
        reading.logged.append(_Logged("eval" if kind == "eval" else "step", step, seconds, metrics, launch))
        if kind == "train":
            last_step = step
            seen_train = True
    _drop_constant_unit_loss_scale(reading.logged)
    return reading


def _drop_constant_unit_loss_scale(logged: list[_Logged]) -> None:
    scales = [e.metrics["loss_scale"] for e in logged if "loss_scale" in e.metrics]
    if scales and all(s == 1.0 for s in scales):
        for e in logged:
            e.metrics.pop("loss_scale", None)


def source_of(entries: Sequence[tuple[str, Any]], default: str) -> str:
    """``megatron-swift`` when the entries carry Megatron's keys, else ``default``."""
    for _, obj in entries:
        if isinstance(obj, dict) and any(k in obj for k in _MEGATRON_KEYS):
            return "megatron-swift"
    return default


def build_events(
    entries: Sequence[tuple[str, Any]],
    *,
    run_id: str,
    source: str,
    start_ts: float,
    end_ts: float | None,
    run_name: str,
    team: str,
    require_step: bool = False,
    errors: Sequence[str] = (),
    launches: Sequence[int] | None = None,
    launch_on_step_back: bool = False,
    rank: int = 0,
    world_size: int = 1,
    tags: dict[str, str] | None = None,
    ended_normally: bool = False,
) -> ImportResult:
    """The events of one rank of a run from its log entries; ``end_ts`` (the file's time) sets the start when
    given, else the entries' seconds count from ``start_ts``. Launches: see :func:`read_entries`.
    ``ended_normally``: the log says so in its own way (Megatron-LM's ``[after training is done]``)."""
    reading = read_entries(
        entries, require_step=require_step, launches=launches, launch_on_step_back=launch_on_step_back
    )
    run_seconds = max([reading.runtime or 0.0, reading.end_elapsed, *(e.seconds for e in reading.logged)])
    if end_ts is not None:
        start_ts = end_ts - run_seconds
    b = EventBuilder(run_id, source, start_ts, run_name, team, rank=rank, world_size=world_size, tags=tags)
    b.result.errors.extend(errors)
    b.result.errors.extend(reading.errors)
    last_step = 0
    last_ts = start_ts
    launch = 0
    for e in reading.logged:
        ts = start_ts + e.seconds
        if e.launch != launch:
            launch = e.launch
            b.relaunch(launch, ts)
        b.add(e.kind, e.step, ts, e.metrics)
        last_ts = max(last_ts, ts)
        if e.kind == "step":
            last_step = e.step
    if not reading.logged and reading.end_step is not None:
        last_step = reading.end_step
    reading.summary_seen = reading.summary_seen or ended_normally
    b.add("run_end", last_step, max(last_ts, start_ts + run_seconds) + 1.0, reading.end_metrics, tags=end_tags(reading))
    return b.result


def end_tags(reading: _Reading) -> dict[str, str]:
    """How the logged run ended, as the live producer's run_end says it (``status``, ``reason``).

    The trainer's summary (``train_runtime``) is logged only when ``train()`` returns: ``finished``.
    ms-swift writes its final state line in a ``finally:``, so a state line without a summary is a run
    that raised: ``failed``. Neither: the process was killed (OOM killer, SIGKILL, node loss), or the log is
    a checkpoint's / a run still writing: ``unknown``, never ``finished``.
    """
    if reading.summary_seen:
        return {"status": "finished", "reason": "normal"}
    if reading.state_seen:
        return {"status": "failed", "reason": "no_train_summary"}
    return {"status": "unknown", "reason": "log_ends_without_summary"}
