"""A run as TensorBoard event files, written with TensorBoard's own writer.

Layout (TensorBoard calls each directory with event files a "run"):

* ``<dest>/``: per metric ``<metric>/mean``, ``<metric>/min``, ``<metric>/max`` across ranks, at each
  aligned step (latest attempt), stamped with the step's first event time;
* ``<dest>/rank_00003/``: that rank's own value of each metric under the metric's name, so
  TensorBoard overlays the ranks on one chart per metric.

``tensorboard`` is optional at run time (the dev extra has it): without it the export
stops with one line saying what to install.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rankstream.export.source import ExportError, ExportSummary, RunSource


def _imports() -> tuple[Any, Any, Any]:
    try:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise ExportError("--format tensorboard needs the tensorboard package: pip install tensorboard") from None
    return Event, Summary, EventFileWriter


def rank_dir(rank: int) -> str:
    """The TensorBoard run (sub-directory) of one rank; zero-padded so they sort by rank."""
    return f"rank_{rank:05d}"


class _Writers:
    """One EventFileWriter per TensorBoard run directory, opened on first use."""

    def __init__(self, root: Path, writer_class: Any) -> None:
        self.root = root
        self.writer_class = writer_class
        self.open: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self.open:
            self.open[name] = self.writer_class(str(self.root / name) if name else str(self.root))
        return self.open[name]

    def close(self) -> list[str]:
        for writer in self.open.values():
            writer.close()
        return sorted(str(p) for p in self.root.rglob("events.out.tfevents.*"))


def write_tensorboard(source: RunSource, dest: str, *, ranks: bool = True) -> ExportSummary:
    """Write the aggregates (and with ``ranks`` every rank's series) of the run under ``dest``."""
    if "://" in dest:
        raise ExportError(f"--format tensorboard writes to a local directory, not {dest!r}")
    Event, Summary, EventFileWriter = _imports()
    root = Path(dest).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    writers = _Writers(root, EventFileWriter)
    summary = ExportSummary(dest=str(root))

    def scalar(run: str, tag: str, step: int, value: float, wall_time: float) -> None:
        point = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
        wall = wall_time if math.isfinite(wall_time) and wall_time > 0 else 0.0
        writers.get(run).add_event(Event(wall_time=wall, step=step, summary=point))

    try:
        points = 0
        for batch in source.aggregates():
            columns = batch.to_pydict()
            for metric, step, mean, lo, hi, wall in zip(
                columns["metric"],
                columns["step"],
                columns["mean"],
                columns["min"],
                columns["max"],
                columns["wall_time"],
                strict=True,
            ):
                for stat, value in (("mean", mean), ("min", lo), ("max", hi)):
                    scalar("", f"{metric}/{stat}", step, value, wall)
                points += 1
        summary.rows["aggregate steps"] = points
        if ranks:
            values = 0
            for batch in source.rank_series():
                columns = batch.to_pydict()
                for rank, metric, step, value, wall in zip(
                    columns["rank"],
                    columns["metric"],
                    columns["step"],
                    columns["value"],
                    columns["wall_time"],
                    strict=True,
                ):
                    scalar(rank_dir(rank), metric, step, value, wall)
                    values += 1
            summary.rows["rank values"] = values
    finally:
        summary.files = writers.close()
    return summary
