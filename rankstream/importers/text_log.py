"""A training job's captured stdout/stderr (``tee train.log``): the log lines in it become events.

Read: Hugging Face Trainer's printed log dicts and its progress bar
(:mod:`.printed_logs`; ms-swift prints its dicts the same way), Megatron-LM's
iteration and validation lines (:mod:`.megatron_log`). Everything else (other
progress bars, warnings, banners, tracebacks) is counted, not reported line by
line; a line that looks like a log dict but cannot be read is reported.

Lines prefixed by torchrun's ``--tee`` (``[default3]:``: role and *local*
rank; ``[rank3]:``) belong to that rank: each rank that printed log lines gets
events of its own, and ``world_size`` is the number of such ranks. Ranks that
printed no log line (most trainers log from one rank: HF from rank 0, Megatron
from the last) are not counted, or the detectors would wait for ranks that never
report; when the printing ranks are not ``0..n-1``, they are numbered densely and
each event's ``log_rank`` tag keeps the rank the log named.

Time: Megatron's lines carry their own time stamp (local time, no zone); a HF
dict takes the elapsed time of the bar drawn next to it, the file's modification
time being the end of the run, as for ``logging.jsonl``.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from rankstream.importers.events import ImportResult
from rankstream.importers.log_lines import build_events
from rankstream.importers.megatron_log import MegatronLine, fill_missing_losses, megatron_mark, parse_megatron_line
from rankstream.importers.printed_logs import Bar, looks_like_dict, parse_bar, parse_printed_dict

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: torchrun ``--tee``'s default ``[${role_name}${local_rank}]:`` (``[default3]:``), and ``[rank3]:``.
_RANK_PREFIX = re.compile(r"^\[(?P<role>[A-Za-z_]*?)(?P<rank>\d+)\]:\s?")


@dataclass
class _Stream:
    """One printing rank's log items in order: ``("bar", Bar)``, ``("dict", where, obj)``,
    ``("megatron", where, MegatronLine)``."""

    items: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def has_entries(self) -> bool:
        return any(item[0] != "bar" for item in self.items)


def segments(lines: Iterable[str | bytes]) -> Iterator[tuple[int, int | None, str]]:
    """``(line number, printed rank, text)`` for each ``\\r``-separated piece of each line (tqdm redraws)."""
    for lineno, raw in enumerate(lines, 1):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        text = _ANSI.sub("", text.lstrip("\ufeff").rstrip("\r\n"))
        prefix = _RANK_PREFIX.match(text)
        rank = int(prefix["rank"]) if prefix else None
        if prefix:
            text = text[prefix.end() :]
        for piece in text.split("\r"):
            if piece.strip():
                yield lineno, rank, piece


def _dict_entries(items: list[tuple[Any, ...]]) -> list[tuple[str, dict[str, Any]]]:
    """Each printed dict with the step and elapsed time of the training bar drawn next after it (tqdm redraws
    the bar right after ``write``), or else last before it. The training bar is the first bar without a
    description (evaluation's bar, without one too, has another total)."""
    bars = [item[1] for item in items if item[0] == "bar" and not item[1].desc]
    train_total = bars[0].total if bars else None
    entries: list[tuple[str, dict[str, Any]]] = []
    previous: Bar | None = None
    for index, item in enumerate(items):
        if item[0] == "bar":
            if not item[1].desc and item[1].total == train_total:
                previous = item[1]
            continue
        if item[0] != "dict":
            continue
        bar = _next_bar(items, index + 1, train_total) or previous
        obj = dict(item[2])
        if bar is not None:
            if not any(k in obj for k in ("global_step/max_steps", "iteration", "step", "global_step")):
                obj["step"] = bar.n
            obj.setdefault("elapsed_time", bar.elapsed)
        entries.append((item[1], obj))
    return entries


def _next_bar(items: list[tuple[Any, ...]], start: int, total: int | None) -> Bar | None:
    for item in items[start:]:
        if item[0] == "dict":
            return None
        if item[0] == "bar" and not item[1].desc and item[1].total == total:
            bar: Bar = item[1]
            return bar
    return None


def _megatron_entries(
    lines: list[tuple[str, MegatronLine]], t0: float | None, starts: list[int]
) -> tuple[list[tuple[str, dict[str, Any]]], list[int]]:
    """Megatron lines as entries timed by their stamps (seconds from ``t0``) or, without stamps, by adding up
    iterations x ``elapsed time per iteration``; and the launch of each: a new one after a process start's
    line (``starts``: their line numbers) or where the iteration goes back (a resume repeats iterations)."""
    fill_missing_losses([line for _, line in lines])
    entries: list[tuple[str, dict[str, Any]]] = []
    launches: list[int] = []
    launch = 0
    seconds = 0.0
    last_iteration: int | None = None
    previous_line: int | None = None
    for where, line in lines:
        restarted = previous_line is not None and any(previous_line < s < line.lineno for s in starts)
        stepped_back = line.kind == "train" and last_iteration is not None and line.iteration <= last_iteration
        if restarted or stepped_back:
            launch += 1
            last_iteration = None
        previous_line = line.lineno
        if line.stamp is not None and t0 is not None:
            seconds = line.stamp - t0
        elif line.kind == "train":
            per_iteration = line.values.get("elapsed time per iteration (ms)", 0.0) / 1000.0
            done = 1 if last_iteration is None or line.iteration <= last_iteration else line.iteration - last_iteration
            seconds += done * per_iteration if per_iteration == per_iteration else 0.0
        if line.kind == "train":
            last_iteration = line.iteration
        entries.append((where, {**line.values, "step": line.iteration, "elapsed_time": seconds}))
        launches.append(launch)
    return entries, launches


def import_training_log(
    lines: Iterable[str | bytes],
    *,
    run_id: str,
    end_ts: float | None = None,
    start_ts: float = 0.0,
    run_name: str = "",
    team: str = "",
    tz: tzinfo | None = None,
) -> ImportResult:
    """Events of every rank that printed log lines; ``end_ts`` (the file's modification time) ends a run whose
    lines carry no time stamp. ``tz``: the zone of Megatron's time stamps (the local one when ``None``)."""
    streams: dict[int | None, _Stream] = {}
    errors: list[str] = []
    used_lines: set[int] = set()
    seen_lines: set[int] = set()
    marks: list[tuple[int, str]] = []  # Megatron's process start / training done lines, any rank
    for lineno, rank, text in segments(lines):
        seen_lines.add(lineno)
        stream = streams.setdefault(rank, _Stream())
        where = f"line {lineno}"
        megatron = parse_megatron_line(text, tz) if "iteration" in text else None
        if megatron is not None:
            megatron.lineno = lineno
            stream.items.append(("megatron", where, megatron))
            used_lines.add(lineno)
        elif (mark := megatron_mark(text)) is not None:
            marks.append((lineno, mark))
        elif looks_like_dict(text):
            used_lines.add(lineno)
            try:
                stream.items.append(("dict", where, parse_printed_dict(text)))
            except ValueError as exc:
                errors.append(f"{where}: {exc}")
        elif (bar := parse_bar(text)) is not None:
            stream.items.append(("bar", bar))
    printing = sorted((r for r, s in streams.items() if s.has_entries), key=lambda r: -1 if r is None else r)
    ignored = len(seen_lines - used_lines)
    if not printing:
        if not errors:
            errors.append(f"no trainer log dict or Megatron iteration line in {len(seen_lines)} lines")
        return ImportResult(errors=errors, source="training-log", ignored=ignored)
    stamps = [item[2].stamp for r in printing for item in streams[r].items if item[0] == "megatron" and item[2].stamp]
    t0 = min(stamps) if stamps else None
    is_megatron = any(item[0] == "megatron" for r in printing for item in streams[r].items)
    starts = [lineno for lineno, mark in marks if mark == "start"]
    results: list[ImportResult] = []
    for index, rank in enumerate(printing):
        items = streams[rank].items
        megatron_lines = [(item[1], item[2]) for item in items if item[0] == "megatron"]
        launches: list[int] | None = None
        done = False
        if megatron_lines:
            entries, launches = _megatron_entries(megatron_lines, t0, starts)
            last_line = megatron_lines[-1][1].lineno
            done = any(mark == "done" and lineno > last_line for lineno, mark in marks)
        else:
            entries = _dict_entries(items)
        results.append(
            build_events(
                entries,
                run_id=run_id,
                source="megatron-lm" if is_megatron else "trainer-log",
                start_ts=t0 if t0 is not None else start_ts,
                end_ts=None if t0 is not None else end_ts,
                run_name=run_name,
                team=team,
                launch_on_step_back=True,
                launches=launches,
                ended_normally=done,
                rank=index,
                world_size=len(printing),
                tags=None if rank is None else {"log_rank": str(rank)},
            )
        )
    merged = ImportResult(source=results[0].source, ignored=ignored, errors=errors)
    merged.events = list(heapq.merge(*(r.events for r in results), key=lambda ev: ev["ts"]))
    for r in results:
        merged.errors.extend(r.errors)
    return merged
