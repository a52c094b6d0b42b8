"""Pure conversion of contract records (raw events, aligned steps, alerts) into column-oriented rows.

No I/O here: the worker feeds decoded messages in and inserts the resulting
:class:`Batch`. Validation of steps and alerts lives here (raw events are
validated by ``rankstream.schema``); every rejection is an :class:`InvalidRecord`
with a one-line reason that goes to the dead-letter topic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

from rankstream.schema import MAX_INT64, MAX_WORLD_SIZE, InvalidEvent, dumps, require_int
from rankstream.sinks.store.tables import COLUMNS, column_names

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_STEP_FIELDS = frozenset(
    {
        "v",
        "run_id",
        "step",
        "world_size",
        "ranks_reported",
        "missing_ranks",
        "complete",
        "ts_first",
        "ts_last",
        "metrics",
        "restart",  # stored as the `attempt` column
    }
)
_AGG_FIELDS = ("mean", "min", "max", "std")


class InvalidRecord(InvalidEvent):
    """A step or alert record that breaks the contract (same shape as InvalidEvent)."""


_EVENT_FIELDS = tuple(
    map(
        itemgetter,
        ("run_id", "rank", "seq", "inc", "kind", "step", "host", "local_rank", "world_size", "metrics", "tags"),
    )
)
#: Largest ``restart`` (the step's attempt) the ``UInt32`` column holds.
MAX_ATTEMPT = 2**32 - 1


def micros(ts: float) -> int:
    return round(ts * 1_000_000)


class Batch:
    """Column buffers for every table, filled row by row and inserted column-oriented."""

    def __init__(self) -> None:
        self.columns: dict[str, list[list[Any]]] = {t: [[] for _ in COLUMNS[t]] for t in COLUMNS}
        self.rows = 0

    def count(self, table: str) -> int:
        return len(self.columns[table][0])

    def add(self, table: str, row: tuple[Any, ...]) -> None:
        for column, value in zip(self.columns[table], row, strict=True):
            column.append(value)
        self.rows += 1

    def add_event(self, event: dict[str, Any], team: str) -> None:
        """One ``events`` row and one ``metrics`` row per metric of a validated raw event."""
        ts = micros(event["ts"])
        run_id, rank, seq, kind, step = event["run_id"], event["rank"], event["seq"], event["kind"], event["step"]
        inc, host, world_size = event["inc"], event["host"], event["world_size"]
        metrics: dict[str, float] = event["metrics"]
        n = len(metrics)
        self.add(
            "events",
            (team, run_id, rank, seq, inc, kind, step, ts, host, event["local_rank"], world_size, n, event["tags"]),
        )
        if not n:
            return
        cols = self.columns["metrics"]
        # Column order: team, run_id, metric, kind, step, rank, seq, inc, ts, value, host, world_size
        constants = ((0, team), (1, run_id), (3, kind), (4, step), (5, rank), (6, seq), (7, inc), (8, ts))
        for index, constant in constants:
            cols[index].extend([constant] * n)
        cols[2].extend(metrics.keys())
        cols[9].extend(metrics.values())
        cols[10].extend([host] * n)
        cols[11].extend([world_size] * n)
        self.rows += n

    def add_events(self, events: Sequence[dict[str, Any]], teams: Sequence[str]) -> None:
        """``add_event(events[i], teams[i])`` for every ``i``, built column by column (the batch's hot path).

        Same rows in the same order as the row-by-row method, without per-row
        Python calls: fields are picked with ``itemgetter`` and the per-event
        constants of the ``metrics`` rows are repeated with ``itertools``.
        """
        if not events:
            return
        run_ids, ranks, seqs, incs, kinds, steps, hosts, local_ranks, world_sizes, metrics, tags = (
            list(map(getter, events)) for getter in _EVENT_FIELDS
        )
        ts = [round(event["ts"] * 1_000_000) for event in events]
        counts = list(map(len, metrics))
        for column, values in zip(
            self.columns["events"],
            (teams, run_ids, ranks, seqs, incs, kinds, steps, ts, hosts, local_ranks, world_sizes, counts, tags),
            strict=True,
        ):
            column.extend(values)
        cols = self.columns["metrics"]
        # Column order: team, run_id, metric, kind, step, rank, seq, inc, ts, value, host, world_size
        total = sum(counts)
        for index, values in (
            (0, teams), (1, run_ids), (3, kinds), (4, steps), (5, ranks), (6, seqs), (7, incs), (8, ts),
            (10, hosts), (11, world_sizes),
        ):  # fmt: skip
            first = values[0]
            if values.count(first) == len(values):  # the same in every event (team, host, ...): no per-row work
                cols[index].extend([first] * total)
            else:
                cols[index].extend(chain.from_iterable(map(repeat, values, counts)))
        cols[2].extend(chain.from_iterable(metrics))
        cols[9].extend(chain.from_iterable(map(dict.values, metrics)))
        self.rows += len(events) + total

    def add_step(self, record: dict[str, Any], team: str) -> None:
        """A validated aligned step: one ``steps`` row and one ``step_metrics`` row per metric.

        The step's ``restart`` is its ``attempt``: a step aligned again after a resume is a new row.
        An evaluation's aggregate (``phase: "eval"``) is only ``step_metrics`` rows, named ``eval_*``.
        """
        if record.get("phase") == "eval":
            self._add_eval(record, team)
            return
        extra = {k: v for k, v in record.items() if k not in _STEP_FIELDS}
        ts_first = micros(record["ts_first"])
        attempt = record["restart"]
        self.add(
            "steps",
            (
                team,
                record["run_id"],
                record["step"],
                attempt,
                record["world_size"],
                record["ranks_reported"],
                record["missing_ranks"],
                record["complete"],
                ts_first,
                micros(record["ts_last"]),
                dumps(extra).decode() if extra else "",
            ),
        )
        for name, agg in record["metrics"].items():
            self.add(
                "step_metrics",
                (
                    team,
                    record["run_id"],
                    name,
                    record["step"],
                    attempt,
                    ts_first,
                    agg["mean"],
                    agg["min"],
                    agg["max"],
                    agg["std"],
                    agg["argmin"],
                    agg["argmax"],
                    agg["n"],
                ),
            )

    def _add_eval(self, record: dict[str, Any], team: str) -> None:
        """Eval aggregates beside the train step's metrics: the ``steps`` row stays the train step's, and a
        name that does not say eval (``loss``, ``val_loss``) gets the ``eval_`` prefix so it cannot replace one."""
        ts_first = micros(record["ts_first"])
        for name, agg in record["metrics"].items():
            metric = name if name.startswith("eval_") else f"eval_{name}"
            self.add(
                "step_metrics",
                (team, record["run_id"], metric, record["step"], record["restart"], ts_first, agg["mean"], agg["min"],
                 agg["max"], agg["std"], agg["argmin"], agg["argmax"], agg["n"]),
            )  # fmt: skip

    def add_alert(self, alert: dict[str, Any]) -> None:
        self.add(
            "alerts",
            (
                alert["team"],
                alert["rule"],
                alert["severity"],
                alert["run_id"],
                alert["alert_id"],
                alert["step"],
                alert["ranks"],
                micros(alert["ts"]),
                alert["message"],
                dumps(alert["evidence"]).decode(),
                alert["state"],
                alert["resolved_step"],
            ),
        )

    def add_run(self, run: dict[str, Any]) -> None:
        self.add("runs", tuple(run[name] for name in column_names("runs")))


def jsonable(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) by their contract strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


# ------------------------------------------------------------------ validation


def _int(obj: dict[str, Any], key: str, minimum: int = -MAX_INT64, maximum: int = MAX_INT64) -> int:
    """An integer in [minimum, maximum]: out-of-range values would fail the insert forever, not just once."""
    return require_int(obj, key, minimum, maximum, InvalidRecord)


def _float(obj: dict[str, Any], key: str, *, finite: bool = False) -> float:
    value = obj.get(key)
    if type(value) in (int, float):  # not bool
        out = float(value)  # type: ignore[arg-type]  # (mypy does not narrow on type(...) in ...)
    elif value is None and not finite:
        out = math.nan
    elif isinstance(value, str) and value in _NONFINITE and not finite:
        out = _NONFINITE[value]
    else:
        raise InvalidRecord(f"field {key!r} must be a number, got {value!r:.40}")
    if finite and not math.isfinite(out):
        raise InvalidRecord(f"field {key!r} must be finite")
    return out


def _str(obj: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or (required and not value):
        raise InvalidRecord(f"missing or empty string field {key!r}")
    return value


def _ranks(obj: dict[str, Any], key: str) -> list[int]:
    value = obj.get(key, [])
    if not isinstance(value, list) or any(type(r) is not int or r < 0 or r >= MAX_WORLD_SIZE for r in value):
        raise InvalidRecord(f"field {key!r} must be a list of ranks (integers in [0, {MAX_WORLD_SIZE}))")
    return value


def _version(obj: Any, kind: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidRecord(f"{kind} must be a JSON object, got {type(obj).__name__}")
    if obj.get("v") != 1:
        raise InvalidRecord(f"unsupported schema version {obj.get('v')!r} (expected 1)")
    return obj


def validate_step(obj: Any) -> dict[str, Any]:
    """Check an aligned-step record; returns it with numbers normalised (unknown fields kept)."""
    rec = dict(_version(obj, "aligned step"))
    _str(rec, "run_id")
    _int(rec, "step", 0)
    _int(rec, "world_size", 1, MAX_WORLD_SIZE)
    _int(rec, "ranks_reported", 0, MAX_WORLD_SIZE)
    rec["restart"] = _int(rec, "restart", 0, MAX_ATTEMPT) if "restart" in rec else 0
    rec["missing_ranks"] = _ranks(rec, "missing_ranks")
    complete = rec.get("complete")
    if type(complete) is not bool:
        raise InvalidRecord("field 'complete' must be a boolean")
    rec["ts_first"] = _float(rec, "ts_first", finite=True)
    rec["ts_last"] = _float(rec, "ts_last", finite=True)
    metrics = rec.get("metrics", {})
    if not isinstance(metrics, dict):
        raise InvalidRecord("field 'metrics' must be an object")
    clean: dict[str, dict[str, Any]] = {}
    for name, agg in metrics.items():
        if not isinstance(agg, dict):
            raise InvalidRecord(f"metric {name!r} must be an object of aggregates")
        out: dict[str, Any] = {field: _float(agg, field) for field in _AGG_FIELDS}
        for field in ("argmin", "argmax"):
            value = agg.get(field, -1)
            out[field] = value if type(value) is int and 0 <= value < MAX_WORLD_SIZE else -1
        n = agg.get("n", 0)
        if type(n) is not int or n < 0 or n > MAX_WORLD_SIZE:
            raise InvalidRecord(f"metric {name!r}: 'n' must be an integer in [0, {MAX_WORLD_SIZE}]")
        out["n"] = n
        clean[name] = out
    rec["metrics"] = clean
    return rec


def validate_alert(obj: Any) -> dict[str, Any]:
    """Check an alert record; returns a normalised copy."""
    rec = dict(_version(obj, "alert"))
    for key in ("alert_id", "run_id", "rule", "severity"):
        _str(rec, key)
    rec["team"] = _str(rec, "team", required=False) if "team" in rec else ""
    rec["message"] = _str(rec, "message", required=False) if "message" in rec else ""
    rec["step"] = _int(rec, "step") if "step" in rec else -1
    rec["ranks"] = _ranks(rec, "ranks")
    rec["ts"] = _float(rec, "ts", finite=True)
    evidence = rec.get("evidence", {})
    if not isinstance(evidence, dict):
        raise InvalidRecord("field 'evidence' must be an object")
    rec["evidence"] = jsonable(evidence)
    state = rec.get("state", "firing")
    if state not in ("firing", "resolved"):
        raise InvalidRecord("field 'state' must be 'firing' or 'resolved'")
    rec["state"] = state
    rec["resolved_step"] = _int(rec, "resolved_step") if state == "resolved" and "resolved_step" in rec else -1
    return rec
