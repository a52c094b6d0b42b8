"""Import past runs into v1 wire events (rank 0, world_size 1) so the detectors can judge them.

Formats: ms-swift ``logging.jsonl`` (one object per logging step) and Hugging
Face ``trainer_state.json`` (``log_history``). Both files are written by
Python's ``json`` and may hold ``NaN``/``Infinity`` literals, so they are read
with the standard library parser (orjson rejects those).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rankstream.schema import encode_metric

FORMATS = ("events", "swift", "hf")

_SWIFT_RENAME = {"loss": "loss", "grad_norm": "grad_norm", "learning_rate": "lr", "lr": "lr"}
_SWIFT_SKIP = {"global_step/max_steps", "elapsed_time", "remaining_time", "percentage", "global_step", "step"}
_HF_RENAME = {"loss": "loss", "grad_norm": "grad_norm", "learning_rate": "lr"}
_HF_SUMMARY = ("train_runtime", "train_loss", "train_samples_per_second", "train_steps_per_second", "total_flos")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])", re.IGNORECASE)
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


@dataclass
class ImportResult:
    """Wire events in order, and one line per input entry that could not be used."""

    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    source: str = ""


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


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    return None


def _metric_name(key: str) -> str:
    """A metric name that passes through SQL and dashboards: ``memory(GiB)`` -> ``memory_GiB``."""
    name = re.sub(r"[^0-9A-Za-z_]+", "_", key).strip("_")
    return name or "value"


class _Builder:
    def __init__(self, run_id: str, source: str, start_ts: float, run_name: str, team: str) -> None:
        self.run_id = run_id
        self.seq = 0
        self.source = source
        self.result = ImportResult(source=source)
        self.last_ts = start_ts
        self.last_step = 0
        self.add(
            "run_start",
            0,
            start_ts,
            {},
            meta={"run_name": run_name or run_id, "team": team, "project": "", "task_type": "", "model_name": ""},
        )

    def add(self, kind: str, step: int, ts: float, metrics: dict[str, float], meta: dict | None = None) -> None:
        ev: dict[str, Any] = {
            "v": 1,
            "kind": kind,
            "run_id": self.run_id,
            "rank": 0,
            "world_size": 1,
            "local_rank": 0,
            "host": "",
            "step": step,
            "ts": ts,
            "seq": self.seq,
            "metrics": {k: encode_metric(v) for k, v in metrics.items()},
            "tags": {"source": self.source},
        }
        if meta:
            ev["meta"] = meta
        self.seq += 1
        self.result.events.append(ev)
        self.last_ts = max(self.last_ts, ts)
        if kind == "step":
            self.last_step = step

    def finish(self) -> ImportResult:
        self.add("run_end", self.last_step, self.last_ts + 1.0, {})
        return self.result


def import_swift_jsonl(
    lines: Iterable[str | bytes], *, run_id: str, start_ts: float = 0.0, run_name: str = "", team: str = ""
) -> ImportResult:
    """ms-swift ``logging.jsonl``: training lines become ``step`` events, ``eval_*`` lines ``eval`` events."""
    b = _Builder(run_id, "ms-swift", start_ts, run_name, team)
    index = 0
    for lineno, raw in enumerate(lines, 1):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:
            b.result.errors.append(f"line {lineno}: not valid JSON: {str(exc)[:80]}")
            continue
        if not isinstance(obj, dict):
            b.result.errors.append(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
            continue
        index += 1
        step = _swift_step(obj, index)
        elapsed = obj.get("elapsed_time")
        seconds = parse_duration(elapsed) if isinstance(elapsed, str) else _number(elapsed)
        ts = start_ts + (seconds if seconds is not None else float(index))
        is_eval = any(k.startswith("eval_") for k in obj)
        metrics: dict[str, float] = {}
        for key, value in obj.items():
            if key in _SWIFT_SKIP:
                continue
            num = _number(value)
            if num is None:
                continue
            if key == "memory(GiB)":
                metrics["mem_peak_mb"] = num * 1024.0
            elif key == "train_speed(iter/s)":
                if num > 0:
                    metrics["step_time_s"] = 1.0 / num
            elif key == "train_speed(s/it)":
                metrics["step_time_s"] = num
            else:
                metrics[_SWIFT_RENAME.get(key, _metric_name(key))] = num
        if not metrics:
            b.result.errors.append(f"line {lineno}: no numeric metrics")
            continue
        b.add("eval" if is_eval else "step", step, ts, metrics)
    return b.finish()


def _swift_step(obj: dict[str, Any], index: int) -> int:
    gs = obj.get("global_step/max_steps")
    if isinstance(gs, str) and "/" in gs:
        head = gs.split("/", 1)[0].strip()
        if head.isdigit():
            return int(head)
    for key in ("global_step", "step"):
        value = obj.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return index


def import_hf_trainer_state(
    state: str | bytes | dict[str, Any], *, run_id: str, start_ts: float = 0.0, run_name: str = "", team: str = ""
) -> ImportResult:
    """Hugging Face ``trainer_state.json``: ``log_history`` entries become ``step`` / ``eval`` events."""
    if not isinstance(state, dict):
        try:
            state = json.loads(state)
        except ValueError as exc:
            return ImportResult(errors=[f"trainer_state.json is not valid JSON: {str(exc)[:80]}"], source="hf")
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        return ImportResult(errors=["trainer_state.json has no 'log_history' list"], source="hf")
    history: list[Any] = state["log_history"]
    b = _Builder(run_id, "hf-trainer", start_ts, run_name, team)
    sec_per_step = 1.0
    for entry in history:
        if isinstance(entry, dict) and "train_runtime" in entry:
            runtime = _number(entry.get("train_runtime"))
            steps = _number(entry.get("step")) or _number(state.get("global_step"))
            if runtime and steps:
                sec_per_step = runtime / steps
    for i, entry in enumerate(history):
        where = f"log_history[{i}]"
        if not isinstance(entry, dict):
            b.result.errors.append(f"{where}: expected an object, got {type(entry).__name__}")
            continue
        if any(k in entry for k in _HF_SUMMARY):
            continue
        step = entry.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            b.result.errors.append(f"{where}: missing or invalid 'step'")
            continue
        is_eval = any(k.startswith("eval_") for k in entry)
        metrics: dict[str, float] = {}
        for key, value in entry.items():
            if key == "step":
                continue
            num = _number(value)
            if num is not None:
                metrics[_HF_RENAME.get(key, _metric_name(key))] = num
        if not metrics:
            b.result.errors.append(f"{where}: no numeric metrics")
            continue
        if "lr" in metrics and not math.isfinite(metrics["lr"]):
            del metrics["lr"]
        b.add("eval" if is_eval else "step", step, start_ts + step * sec_per_step, metrics)
    return b.finish()


def sniff_format(head: str) -> str:
    """Guess a file's format from its first few KB: ``events``, ``swift`` or ``hf``."""
    stripped = head.lstrip()
    if '"log_history"' in head:
        return "hf"
    first = stripped.split("\n", 1)[0]
    try:
        obj = json.loads(first)
    except ValueError:
        return "events"
    if isinstance(obj, dict):
        if "kind" in obj and "run_id" in obj:
            return "events"
        if "global_step/max_steps" in obj or "loss" in obj or any(str(k).startswith("eval_") for k in obj):
            return "swift"
    return "events"
