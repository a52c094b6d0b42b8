"""ms-swift and Megatron-swift ``logging.jsonl``: one JSON object per line, appended as the run goes.

Writers (ms-swift 3.x/4.x, read in their source): ``swift/trainers/patcher.py``
(``add_train_message``: HF Trainer's logs plus ``global_step/max_steps``,
``elapsed_time``, ``memory(GiB)``, ``train_speed(s/it)``; 3.0-3.2 wrote
``train_speed(iter/s)`` from ``swift/trainers/mixin.py``), ``swift/megatron/
callbacks/print.py`` (4.x: ``iteration``) and ``swift/megatron/trainers/base.py``
(3.x: ``lm loss``, ``loss_scale``, ``elapsed_time_per_iteration``), all through
``swift/utils/io_utils.py`` ``append_to_jsonl``; the run's last line is the final
state ``SwiftSft._save_trainer_state`` writes in a ``finally:`` (``swift/pipelines/
train/sft.py``), which repeats the whole ``log_history``. The file is written by
Python's ``json`` and may hold ``NaN``/``Infinity``, so it is read with the
standard library parser (orjson rejects those).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rankstream.importers.events import ImportResult
from rankstream.importers.log_lines import build_events, entry_kind, source_of


def _parse_lines(lines: Iterable[str | bytes]) -> tuple[list[tuple[str, Any]], list[str]]:
    entries: list[tuple[str, Any]] = []
    errors: list[str] = []
    for lineno, raw in enumerate(lines, 1):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        text = text.lstrip("\ufeff")
        if not text.strip():
            continue
        try:
            entries.append((f"line {lineno}", json.loads(text)))
        except ValueError as exc:
            errors.append(f"line {lineno}: not valid JSON: {str(exc)[:80]}")
    return entries, errors


def _with_history_if_alone(entries: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A file holding no log line but the final state (the run ended before its first log, or its lines
    were lost) still has every log in that line's ``log_history``: read those instead."""
    if any(isinstance(obj, dict) and entry_kind(obj) in ("train", "eval") for _, obj in entries):
        return entries
    out: list[tuple[str, Any]] = []
    for where, obj in entries:
        history = obj.get("log_history") if isinstance(obj, dict) else None
        if isinstance(history, list):
            out.extend((f"{where}: log_history[{i}]", item) for i, item in enumerate(history))
        out.append((where, obj))
    return out


def import_swift_jsonl(
    lines: Iterable[str | bytes],
    *,
    run_id: str,
    start_ts: float = 0.0,
    end_ts: float | None = None,
    run_name: str = "",
    team: str = "",
) -> ImportResult:
    """Training lines become ``step`` events, ``eval_*`` lines ``eval`` events; the summary and final state
    lines go on ``run_end``. ``end_ts`` (the file's modification time) places the run so that it ends there."""
    entries, errors = _parse_lines(lines)
    entries = _with_history_if_alone(entries)
    return build_events(
        entries,
        run_id=run_id,
        source=source_of(entries, "ms-swift"),
        start_ts=start_ts,
        end_ts=end_ts,
        run_name=run_name,
        team=team,
        errors=errors,
    )
