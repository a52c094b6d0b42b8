"""TensorBoard event files (``events.out.tfevents.*``): scalars -> step / eval events with their real times.

Read with the ``tensorboard`` package's own reader (``EventFileLoader``: the
TFRecord framing with its CRCs, and the ``Event`` protobuf), which needs no
TensorFlow; ``tensorboard`` is optional (the dev extra has it), so without it
the import stops with one line saying what to install.

Scalars come as ``simple_value`` (``torch.utils.tensorboard``, tensorboardX, TF1)
or as a rank-0 tensor (TF2 ``tf.summary.scalar``, ``SummaryWriter(... new_style=True)``);
histograms, images and text are counted as ignored. Every scalar's ``wall_time``
is kept: an event is stamped with the latest wall time of the values of its step.

A run directory may hold several event files: each process start writes a new
one (Megatron-LM in ``--tensorboard-dir``; HF and Lightning in a new sub-folder,
``runs/<date>_<host>``, ``version_<n>``). Files are taken in the order of their
first wall time; a file that starts after the previous ones ended is a new
launch (``inc`` ``launch-<n>``, as for a relaunched live job), one that overlaps
them is another writer of the same launch (e.g. a separate folder for eval).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankstream.errors import ConfigError
from rankstream.importers.events import ImportResult
from rankstream.importers.log_lines import build_events
from rankstream.importers.tb_tags import tag_key
from rankstream.metric_names import SUMMARY_KEYS

EVENT_FILE_MARK = "tfevents"
_BUCKET_ORDER = {"train": 0, "eval": 1, "summary": 2}
_NOT_A_STEP_ALONE = frozenset({"epoch"})
IGNORED_WHAT = "values that are no training scalar (histograms, text, Megatron's 'vs samples' twins)"


class TensorBoardMissing(ConfigError):
    """Reading event files needs the ``tensorboard`` package (exit 2, one line)."""


@dataclass(frozen=True)
class Scalar:
    wall_time: float
    step: int
    tag: str
    value: float


@dataclass
class EventFile:
    """One file's scalars, and how many of its values were no scalar (histograms, images, text)."""

    path: Path
    scalars: list[Scalar]
    ignored: int = 0
    error: str = ""

    @property
    def first_time(self) -> float:
        return min((s.wall_time for s in self.scalars), default=math.inf)

    @property
    def last_time(self) -> float:
        return max((s.wall_time for s in self.scalars), default=-math.inf)


def is_event_file(path: Path) -> bool:
    return path.is_file() and EVENT_FILE_MARK in path.name


def event_files(path: Path) -> list[Path]:
    """``path`` itself when it is an event file, else every event file under the directory ``path``."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob(f"*{EVENT_FILE_MARK}*") if p.is_file())


def _loader(path: Path) -> Iterator[Any]:
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    except ImportError:
        raise TensorBoardMissing(
            "reading TensorBoard event files needs the tensorboard package: pip install tensorboard"
        ) from None
    return EventFileLoader(str(path)).Load()


def _scalar_value(value: Any) -> float | None:
    if value.HasField("simple_value"):
        return _shortest_float32(value.simple_value)
    if value.HasField("tensor") and not value.tensor.tensor_shape.dim:
        import numpy as np
        from tensorboard.util import tensor_util

        try:
            number = tensor_util.make_ndarray(value.tensor).reshape(-1)[0]
            return _shortest_float32(float(number)) if number.dtype == np.float32 else float(number)
        except (TypeError, ValueError, IndexError):
            return None
    return None


def _shortest_float32(value: float) -> float:
    """A ``simple_value`` (a float32) as the shortest decimal that reads back as it: the 0.05 a trainer logged,
    not 0.05000000074505806, so that an imported run's numbers read as the live run's."""
    import numpy as np

    return float(str(np.float32(value)))


def read_event_file(path: Path) -> EventFile:
    """Every scalar of one event file; a cut or corrupt record ends the file (the reader stops there)."""
    out = EventFile(path, [])
    try:
        for event in _loader(path):
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                number = _scalar_value(value)
                if number is None:
                    out.ignored += 1
                    continue
                out.scalars.append(Scalar(float(event.wall_time), int(event.step), value.tag, number))
    except TensorBoardMissing:
        raise
    except Exception as exc:  # the reader's own DataLossError and protobuf's DecodeError have no common base
        out.error = f"{path.name}: unreadable after {len(out.scalars)} scalars: {str(exc).splitlines()[0][:120]}"
    return out


def launch_numbers(files: list[EventFile]) -> list[int]:
    """The launch of each file (files in order of their first wall time): a new one when a file starts
    after every earlier file's last value, the same one when it overlaps them (another writer, same process)."""
    numbers: list[int] = []
    launch = -1
    last = -math.inf
    for f in files:
        if f.first_time > last or launch < 0:
            launch += 1
        last = max(last, f.last_time)
        numbers.append(launch)
    return numbers


def _entries(files: list[EventFile]) -> tuple[list[tuple[str, dict[str, Any]]], list[int], float, int]:
    """One trainer-log-like entry per (launch, step, train|eval|summary), with its seconds from the first value
    (``elapsed_time``); and the launch of each entry.

    The ``train()`` summary is logged at the last step, as that step's own log is: it is kept apart so that the
    step stays a step. A training entry holding nothing but ``epoch`` (HF writes ``train/epoch`` with every eval
    and with the summary) is no step.
    """
    launches = launch_numbers(files)
    start = min(f.first_time for f in files)
    grouped: dict[tuple[int, int, str], dict[str, Any]] = {}
    times: dict[tuple[int, int, str], float] = {}
    ignored = 0
    for f, launch in zip(files, launches, strict=True):
        for s in f.scalars:
            mapped = tag_key(s.tag)
            if mapped is None:
                ignored += 1
                continue
            kind, key = mapped
            at = (launch, s.step, "summary" if key in SUMMARY_KEYS else str(kind))
            grouped.setdefault(at, {})[key] = s.value
            if key not in _NOT_A_STEP_ALONE:  # HF writes train/epoch again with each eval, later than the step
                times[at] = max(times.get(at, -math.inf), s.wall_time)
    entries: list[tuple[str, dict[str, Any]]] = []
    entry_launches: list[int] = []
    for at in sorted(grouped, key=lambda a: (a[0], a[1], _BUCKET_ORDER[a[2]])):
        launch, step, bucket = at
        if bucket == "train" and grouped[at].keys() <= _NOT_A_STEP_ALONE:
            continue
        obj = {**grouped[at], "step": step, "elapsed_time": times.get(at, start) - start}
        entries.append((f"launch {launch + 1} step {step} ({bucket})", obj))
        entry_launches.append(launch)
    return entries, _dense(entry_launches), start, ignored


def _dense(launches: list[int]) -> list[int]:
    """Launch numbers from 0 without gaps (a launch whose file held no training scalar is left out)."""
    order = {n: i for i, n in enumerate(sorted(set(launches)))}
    return [order[n] for n in launches]


def import_tensorboard(path: Path, *, run_id: str, run_name: str = "", team: str = "") -> ImportResult:
    """Scalars of the event file ``path`` (or of every event file under the directory ``path``) as events."""
    read = [read_event_file(p) for p in event_files(path)]
    errors = [f.error for f in read if f.error]
    ignored = sum(f.ignored for f in read)
    files = sorted((f for f in read if f.scalars), key=lambda f: (f.first_time, str(f.path)))
    if not files:
        why = f"no scalar value in {len(read)} event file(s) (or not an event file)"
        result = ImportResult(errors=errors or [why], source="tensorboard")
        result.ignored, result.ignored_what = ignored, IGNORED_WHAT
        return result
    entries, launches, start, ignored_tags = _entries(files)
    result = build_events(
        entries,
        run_id=run_id,
        source="tensorboard",
        start_ts=start,
        end_ts=None,
        run_name=run_name,
        team=team,
        errors=errors,
        launches=launches,
    )
    result.ignored, result.ignored_what = ignored + ignored_tags, IGNORED_WHAT
    return result
