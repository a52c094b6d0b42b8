"""Team on every row, also on rows stored before the sink knew the run's team: re-stamping.

Raw events carry the team only in rank 0's run_start, and aligned steps not at
all. The writer stamps each row from its run cache, filled by run_start events
and by lookups in the store's ``runs`` table; a row of a run whose run_start
neither this sink nor the store has seen yet (the steps topic ahead of the
events topic, rank 1 reporting before rank 0, another sink holding the events
partition) is stored with ``team = ''``. :class:`TeamlessRuns` remembers those
runs; once the team is known (a later run_start here, or the ``runs`` table,
looked up every few seconds) :func:`restamp` copies their team-less rows with
the team set.

Why a re-insert, not a hold and not a mutation: holding rows back would delay
offset commits and break the two-batch memory bound; ``ALTER TABLE ... UPDATE``
rewrites whole parts. Every table is a ReplacingMergeTree on the row's natural
key (``team`` is not part of it, except in ``alerts``, which the stream jobs stamp
themselves), and a copy with the same key and version is inserted later, so it
is the one FINAL (and merges) keep. ``INSERT ... SELECT ... FINAL WHERE team = ''``
is idempotent: once the copy is in, the latest version has a team and a repeat
(another sink, a restart) selects nothing. Insert deduplication is off for it, so a
Replicated table never drops a copy as a repeat of an earlier identical block.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from rankstream.sinks.store import DATABASE
from rankstream.sinks.store.tables import column_names, qualified

log = logging.getLogger("rankstream.sink")

#: Tables whose rows take the team from the run (``alerts`` carry their own; ``team`` is in their key).
RESTAMP_TABLES = ("runs", "events", "metrics", "steps", "step_metrics")
FIRST_LOOKUP_S = 1.0  # first store lookup of a team-less run; the interval doubles up to MAX_LOOKUP_S
MAX_LOOKUP_S = 60.0
GIVE_UP_S = 3600.0  # a run whose run_start never shows up (or has no team) is not followed longer
MAX_TRACKED = 10_000
_RUN_COLUMNS = column_names("runs")


def restamp_sql(table: str) -> str:
    """``INSERT ... SELECT`` copying ``table``'s team-less rows of runs ``{ids}`` with their ``{teams}``."""
    names = column_names(table)
    team = "transform(run_id, {ids:Array(String)}, {teams:Array(String)}, '')"
    select = ", ".join(team if name == "team" else name for name in names)
    return (
        f"INSERT INTO {qualified(table)} ({', '.join(names)}) SELECT {select} FROM {qualified(table)} FINAL "
        "WHERE run_id IN {ids:Array(String)} AND team = ''"
    )


def restamp(client: Any, teams: dict[str, str]) -> None:
    """Copy the team-less rows of the runs in ``teams`` (run_id -> team) with the team.

    The ``runs`` row goes first, like every insert of the sink: a reader that sees
    a run's rows with a team also sees the run's team.
    """
    if not teams:
        return
    ids = sorted(teams)
    parameters = {"ids": ids, "teams": [teams[run_id] for run_id in ids]}
    for table in RESTAMP_TABLES:  # (chDB reports no written rows for INSERT ... SELECT: nothing to count)
        client.command(restamp_sql(table), parameters=parameters, settings={"insert_deduplicate": 0})


def lookup_teams(client: Any, run_ids: list[str]) -> dict[str, str]:
    """The latest non-empty team any ``runs`` row of ``run_ids`` has (a team-less later row does not hide it)."""
    if not run_ids:
        return {}
    result = client.query(
        f"SELECT run_id, argMax(team, updated_at) FROM {DATABASE}.runs "
        "WHERE run_id IN {ids:Array(String)} AND team != '' GROUP BY run_id",
        parameters={"ids": run_ids},
    )
    return {run_id: team for run_id, team in result.result_rows}


def lookup_runs(client: Any, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Latest ``runs`` rows for ``run_ids`` (those the store knows), keyed by run_id."""
    if not run_ids:
        return {}
    result = client.query(
        f"SELECT {', '.join(_RUN_COLUMNS)} FROM {DATABASE}.runs FINAL WHERE run_id IN {{ids:Array(String)}}",
        parameters={"ids": run_ids},
    )
    rows: dict[str, dict[str, Any]] = {}
    for values in result.result_rows:
        row = dict(zip(_RUN_COLUMNS, values, strict=True))
        for key in ("started_at", "ended_at", "updated_at"):
            if row[key] is not None:
                row[key] = _to_micros(row[key])
        rows[row["run_id"]] = row
    return rows


def _to_micros(value: Any) -> int:
    """A DateTime64 read back (datetime) as integer microseconds since the epoch."""
    if isinstance(value, int):
        return value
    import datetime as dt

    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def lookup_row_teams(client: Any, run_ids: list[str]) -> dict[str, str]:
    """A team any ``events`` or ``steps`` row of ``run_ids`` has: who owns a run whose run_start was never
    stored (both tables are ordered by run_id first, so this reads a few granules per run)."""
    if not run_ids:
        return {}
    where = "WHERE run_id IN {ids:Array(String)} AND team != '' LIMIT 1 BY run_id"
    result = client.query(
        f"SELECT run_id, any(team) FROM (SELECT run_id, team FROM {DATABASE}.events {where} "
        f"UNION ALL SELECT run_id, team FROM {DATABASE}.steps {where}) GROUP BY run_id",
        parameters={"ids": run_ids},
    )
    return {run_id: team for run_id, team in result.result_rows}


def stored_teamless_runs(client: Any, limit: int = MAX_TRACKED) -> list[str]:
    """Runs with team-less rows in the store (what a sink that crashed before re-stamping left behind)."""
    result = client.query(
        f"SELECT DISTINCT run_id FROM (SELECT run_id FROM {DATABASE}.runs WHERE team = '' "
        f"UNION ALL SELECT run_id FROM {DATABASE}.steps WHERE team = '' "
        f"UNION ALL SELECT run_id FROM {DATABASE}.events WHERE team = '') LIMIT {int(limit)}"
    )
    return [row[0] for row in result.result_rows]


class TeamlessRuns:
    """Runs with rows this sink stored (or found) without a team, until re-stamped or given up.

    Bounded (:data:`MAX_TRACKED`, oldest dropped first); each run is looked up in
    the store with a doubling interval and followed for :data:`GIVE_UP_S` at most.
    """

    def __init__(self) -> None:
        self._since: OrderedDict[str, float] = OrderedDict()  # run_id -> when first seen team-less
        self._next_lookup: dict[str, tuple[float, float]] = {}  # run_id -> (when, interval)

    def __len__(self) -> int:
        return len(self._since)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._since

    def note(self, run_ids: Iterable[str], now: float) -> None:
        """Follow ``run_ids`` (rows of them were built without a team)."""
        for run_id in run_ids:
            if run_id in self._since:
                continue
            self._since[run_id] = now
            self._next_lookup[run_id] = (now + FIRST_LOOKUP_S, FIRST_LOOKUP_S)
        while len(self._since) > MAX_TRACKED:
            dropped, _ = self._since.popitem(last=False)
            self._next_lookup.pop(dropped, None)
            log.warning(
                "sink: following more than %d runs without a team; %s is no longer re-stamped", MAX_TRACKED, dropped
            )

    def forget(self, run_ids: Iterable[str]) -> None:
        for run_id in run_ids:
            self._since.pop(run_id, None)
            self._next_lookup.pop(run_id, None)

    def runs(self) -> list[str]:
        return list(self._since)

    def due_soon(self, now: float) -> bool:
        """Whether a store lookup is due (without scheduling the next one)."""
        return any(when <= now for when, _ in self._next_lookup.values())

    def due(self, now: float) -> list[str]:
        """Runs whose next store lookup is due (their next one is scheduled, with a doubled interval)."""
        due = [run_id for run_id, (when, _) in self._next_lookup.items() if when <= now]
        for run_id in due:
            interval = min(self._next_lookup[run_id][1] * 2, MAX_LOOKUP_S)
            self._next_lookup[run_id] = (now + interval, interval)
        return due

    def expired(self, now: float) -> list[str]:
        """Forget and return the runs followed for longer than :data:`GIVE_UP_S`."""
        old = [run_id for run_id, since in self._since.items() if now - since > GIVE_UP_S]
        self.forget(old)
        return old
