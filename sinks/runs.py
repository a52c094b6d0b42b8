"""The ``runs`` table's rows: one per run, latest metadata and status, versioned by ``updated_at``.

Pure functions over contract records (no I/O): run_start opens a row, run_end
closes it, a ``run_lost`` alert marks it lost and a later event brings it
back to ``running``. :class:`RunCache` keeps the latest row per run so every
other row of a run gets its team.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from rankstream.schema import dumps
from rankstream.sinks.records import jsonable, micros

_META_COLUMNS = ("run_name", "project", "task_type", "model_name", "model_architecture")
#: Run statuses the sink sets itself (run_end sets the others: its ``tags.status``, ``finished`` by default).
RUNNING, LOST = "running", "lost"
#: When the ranks of one launch end differently, the row shows the most telling status.
_END_PRECEDENCE = {"finished": 0, "terminated": 1, "failed": 2}
#: The alert rule that marks a run lost (every rank went quiet without run_end).
RUN_LOST_RULE = "run_lost"


def marks_lost(alert: dict[str, Any]) -> bool:
    """A firing ``run_lost`` alert (its ``resolved`` record, the run heard from again, marks nothing)."""
    return alert["rule"] == RUN_LOST_RULE and alert.get("state") != "resolved"


def run_row_from_start(event: dict[str, Any]) -> dict[str, Any]:
    """The ``runs`` row a run_start event opens (metadata from ``meta``)."""
    meta = event["meta"]
    config = meta.get("config", "")
    ts = micros(event["ts"])
    row: dict[str, Any] = {
        "run_id": event["run_id"],
        "team": _meta_str(meta, "team"),
        "config": config if isinstance(config, str) else dumps(jsonable(config)).decode(),
        "world_size": event["world_size"],
        "status": RUNNING,
        "started_at": ts,
        "ended_at": None,
        "updated_at": ts,
    }
    for name in _META_COLUMNS:
        row[name] = _meta_str(meta, name)
    return row


def run_row_from_end(previous: dict[str, Any] | None, event: dict[str, Any]) -> dict[str, Any]:
    """The ``runs`` row after run_end: previous metadata kept, status from the producer's ``tags.status``
    (older producers: ``meta.status``), else 'finished'. When another rank of the same launch already
    ended, the more telling status stays (failed > terminated > finished)."""
    ts = micros(event["ts"])
    row = dict(previous) if previous else run_row_from_start({**event, "meta": {}})
    if not previous:
        row["started_at"] = ts
    status = _end_status(event)
    if previous and previous.get("ended_at") is not None:
        before = str(previous.get("status", ""))
        if _END_PRECEDENCE.get(before, 1) > _END_PRECEDENCE.get(status, 1):
            status = before
    row["status"] = status
    row["ended_at"] = ts if row.get("ended_at") is None else max(ts, row["ended_at"])
    row["updated_at"] = max(ts, row["updated_at"] + 1)
    return row


def merge_run_start(previous: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """A run_start row, keeping metadata an earlier run_start (e.g. rank 0's) already provided.

    A run that ended keeps its status unless the run_start was stamped after it
    ended (a relaunch under the same run_id: running again); a lost run is running
    again only when the run_start was stamped after it was declared lost (a
    relaunch, not a backlog of the first launch's run_start).
    """
    if not previous:
        return new
    merged = dict(new)
    for key, value in previous.items():
        if value not in ("", None, 0) and merged.get(key) in ("", None, 0):
            merged[key] = value
    merged["started_at"] = min(previous["started_at"], new["started_at"])
    merged["updated_at"] = max(previous["updated_at"], new["updated_at"])
    revived = previous.get("status") == LOST and new["updated_at"] > previous["updated_at"]
    ended_at = previous.get("ended_at")
    relaunched = ended_at is not None and new["started_at"] > ended_at
    if relaunched:
        merged["status"], merged["ended_at"] = RUNNING, None
    elif previous.get("status") not in (RUNNING, None) and not revived:
        merged["status"], merged["ended_at"] = previous["status"], previous.get("ended_at")
    return merged


def run_row_lost(previous: dict[str, Any] | None, alert: dict[str, Any]) -> dict[str, Any] | None:
    """The ``runs`` row after a ``run_lost`` alert, or None when it changes nothing.

    A run that ended (run_end seen: finished, failed, ...) stays ended, and a
    run already lost stays as it is. The version (``updated_at``) is the
    alert's time, and at least one microsecond past the previous row's.
    """
    ts = micros(alert["ts"])
    if previous is None:
        return {
            "run_id": alert["run_id"], "team": alert["team"], "config": "", "world_size": len(alert["ranks"]),
            "status": LOST, "started_at": ts, "ended_at": None, "updated_at": ts,
            **dict.fromkeys(_META_COLUMNS, ""),
        }  # fmt: skip
    if previous["ended_at"] is not None or previous["status"] == LOST:
        return None
    return {**previous, "status": LOST, "updated_at": max(ts, previous["updated_at"] + 1)}


def run_row_revived(previous: dict[str, Any] | None, event: dict[str, Any]) -> dict[str, Any] | None:
    """The ``runs`` row of a lost run that an event shows alive again (status ``running``), else None.

    Only an event stamped after the run was declared lost counts: a backlog of
    the run's last events, stored after the alert, does not bring it back.
    """
    if previous is None or previous["status"] != LOST:
        return None
    ts = micros(event["ts"])
    if ts <= previous["updated_at"]:
        return None
    return {**previous, "status": RUNNING, "ended_at": None, "updated_at": ts}


def _end_status(event: dict[str, Any]) -> str:
    for source in (event.get("tags"), event.get("meta")):
        status = source.get("status") if isinstance(source, dict) else None
        if isinstance(status, str) and status:
            return status
    return "finished"


def _meta_str(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key, "")
    return value if isinstance(value, str) else str(value)


class RunCache:
    """Bounded run_id -> latest ``runs`` row map (team lookup for every row, run_end merges).

    ``lost`` holds the cached runs whose status is ``lost``, so the batch
    builder looks at an event's run row only when that run may come back.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._rows: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.lost: set[str] = set()

    def get(self, run_id: str) -> dict[str, Any] | None:
        row = self._rows.get(run_id)
        if row is not None:
            self._rows.move_to_end(run_id)
        return row

    def put(self, row: dict[str, Any]) -> None:
        run_id = row["run_id"]
        self._rows[run_id] = row
        self._rows.move_to_end(run_id)
        if row["status"] == LOST:
            self.lost.add(run_id)
        else:
            self.lost.discard(run_id)
        while len(self._rows) > self.capacity:
            self.lost.discard(self._rows.popitem(last=False)[0])

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._rows

    def team(self, run_id: str) -> str:
        row = self._rows.get(run_id)
        return row["team"] if row else ""
