"""What every importer returns: v1 wire events (one or more ranks), and the lines it could not use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rankstream.errors import InvalidInput
from rankstream.schema import encode_metric


class NothingToImport(InvalidInput):
    """The file is empty or holds no training or eval log entry (exit 1, one line)."""


@dataclass
class ImportResult:
    """Wire events in order, and one line per input entry that could not be used.

    ``ignored`` counts input that is no log entry at all and is not worth a line each: a stdout log's progress
    bars, warnings and banners, a TensorBoard file's histograms and text.
    """

    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    source: str = ""
    ignored: int = 0
    ignored_what: str = "lines without a log entry"

    @property
    def logged(self) -> int:
        """How many ``step`` and ``eval`` events the file gave (``run_start``/``run_end`` not counted)."""
        return sum(1 for ev in self.events if ev["kind"] in ("step", "eval"))


def require_logged(result: ImportResult, what: str) -> ImportResult:
    """``result`` if it holds a step or an eval, else :class:`NothingToImport` naming why."""
    if result.logged:
        return result
    why = result.errors[0] if result.errors else "no training or eval log entry"
    if len(result.errors) > 1:
        why += f" (and {len(result.errors) - 1} more entries unusable)"
    raise NothingToImport(f"nothing to import from {what}: {why}")


class EventBuilder:
    """Numbers events of one rank (``seq`` from 0) and opens the run with ``run_start``.

    A log read from one rank (the usual case) is rank 0 of ``world_size`` 1; a stdout log holding several ranks'
    lines gives one builder per rank. ``tags`` go on every event (e.g. the rank the log printed).
    """

    def __init__(
        self,
        run_id: str,
        source: str,
        start_ts: float,
        run_name: str,
        team: str,
        *,
        rank: int = 0,
        world_size: int = 1,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.run_id = run_id
        self.rank = rank
        self.world_size = world_size
        self._tags = dict(tags or {})
        self.seq = 0
        self.inc = "launch-1"  # every launch an incarnation of its own (see relaunch)
        self.result = ImportResult(source=source)
        self._meta = {"run_name": run_name or run_id, "team": team, "project": "", "task_type": "", "model_name": ""}
        self.add("run_start", 0, start_ts, {}, meta=self._meta)

    def relaunch(self, launch: int, ts: float) -> None:
        """A later launch of the run in the same log: a new incarnation (``inc``, ``seq`` from 0 again) opened
        with its own ``run_start``, as a relaunched live job is (DESIGN "Runs that span launches")."""
        self.inc = f"launch-{launch + 1}"
        self.seq = 0
        self.add("run_start", 0, ts, {}, meta=dict(self._meta))

    def add(
        self,
        kind: str,
        step: int,
        ts: float,
        metrics: dict[str, float],
        meta: dict | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        ev: dict[str, Any] = {
            "v": 1,
            "kind": kind,
            "run_id": self.run_id,
            "rank": self.rank,
            "world_size": self.world_size,
            "local_rank": 0,
            "host": "",
            "step": step,
            "ts": ts,
            "seq": self.seq,
            "inc": self.inc,
            "metrics": {k: encode_metric(v) for k, v in metrics.items()},
            "tags": {"source": self.result.source, **self._tags, **(tags or {})},
        }
        if meta:
            ev["meta"] = meta
        self.seq += 1
        self.result.events.append(ev)
