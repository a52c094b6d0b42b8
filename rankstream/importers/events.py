"""What every importer returns: v1 wire events of one rank, and the lines it could not use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rankstream.errors import InvalidInput
from rankstream.schema import encode_metric


class NothingToImport(InvalidInput):
    """The file is empty or holds no training or eval log entry (exit 1, one line)."""


@dataclass
class ImportResult:
    """Wire events in order, and one line per input entry that could not be used."""

    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    source: str = ""

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
    """Numbers events of rank 0 (``seq`` from 0) and opens the run with ``run_start``."""

    def __init__(self, run_id: str, source: str, start_ts: float, run_name: str, team: str) -> None:
        self.run_id = run_id
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
            "rank": 0,
            "world_size": 1,
            "local_rank": 0,
            "host": "",
            "step": step,
            "ts": ts,
            "seq": self.seq,
            "inc": self.inc,
            "metrics": {k: encode_metric(v) for k, v in metrics.items()},
            "tags": {"source": self.result.source, **(tags or {})},
        }
        if meta:
            ev["meta"] = meta
        self.seq += 1
        self.result.events.append(ev)
