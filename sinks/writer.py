"""The ClickHouse batch writer: rows for every table from decoded messages, and idempotent inserts.

:class:`BatchWriter` builds a :class:`~rankstream.sinks.records.Batch` (with
each run's team from a bounded cache and, for runs it does not know, one store
lookup), inserts it, re-stamps rows it stored before their run's team was
known (:mod:`rankstream.sinks.teams`), and tells rows the store refuses for their data
(:class:`~rankstream.sinks.rejections.Rejected`, never retried) from a store
that is down (any other exception: the caller retries). It knows nothing of
Kafka: :mod:`rankstream.sinks.worker` feeds it and commits offsets.

Column names and types go with every insert, so clickhouse-connect skips its
per-insert DESCRIBE. ``LowCardinality(String)`` columns are sent as plain
``String`` (the Native input format converts them on the server, in C++):
clickhouse-connect would otherwise build each column's dictionary with a
Python loop over every value, the costliest step of an insert.

Idempotence comes from the tables (ReplacingMergeTree on natural keys, read
with FINAL), not from insert-level deduplication: the non-replicated
deduplication log remembers a block id before its rows are committed, so a
retry after a crash between the two would be dropped (migration 0002 turns it
off). Each insert still carries an ``insert_deduplication_token`` from the
batch's Kafka offset ranges, which Replicated tables on a cluster use safely,
and ``async_insert=0``, so an acknowledged insert is a committed part even on
a server whose profile enables asynchronous inserts without waiting for them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from rankstream.sinks.ownership import Owners, claim_runs, foreign_reason
from rankstream.sinks.records import Batch
from rankstream.sinks.rejections import Rejected, find_rejected, rejection_reason
from rankstream.sinks.runs import (
    RunCache,
    marks_lost,
    merge_run_start,
    run_row_from_end,
    run_row_from_start,
    run_row_lost,
    run_row_revived,
)
from rankstream.sinks.store import open_store
from rankstream.sinks.store.tables import TABLE_ORDER, column_names, column_types, qualified
from rankstream.sinks.teams import (
    GIVE_UP_S,
    TeamlessRuns,
    lookup_row_teams,
    lookup_runs,
    lookup_teams,
    restamp,
    stored_teamless_runs,
)

log = logging.getLogger("rankstream.sink")

#: A decoded message: ``("event" | "step" | "alert", record)``.
Item = tuple[str, dict[str, Any]]

NEGATIVE_LOOKUP_S = 2.0  # a run whose team the store did not know is not looked up again for this long
RESTAMP_CHECK_S = 0.5  # how often the consumer loop asks whether team-less rows can be re-stamped
_LC_STRING = "LowCardinality(String)"


def wire_types(table: str) -> list[str]:
    """The types ``table``'s columns are sent as: the DDL types with ``LowCardinality(String)`` as ``String``."""
    return [type_name.replace(_LC_STRING, "String") for type_name in column_types(table)]


_WIRE_TYPES = {table: wire_types(table) for table in TABLE_ORDER}
_COLUMN_NAMES = {table: column_names(table) for table in TABLE_ORDER}


def prepare_client(client: Any) -> None:
    """Do the client's one-time lazy imports now rather than inside the first batch's insert.

    clickhouse-connect imports pandas and numpy (when installed) the first time
    it inserts, to check whether the data is a DataFrame or an array.
    """
    from clickhouse_connect.driver import options

    getattr(options, "pd", None)
    getattr(options, "np", None)


def batch_token(ranges: Mapping[tuple[str, int], tuple[int, int]]) -> str:
    """A deterministic token for the offset ranges ``(topic, partition) -> (first, last)`` of a batch."""
    text = ";".join(f"{topic}/{part}/{first}-{last}" for (topic, part), (first, last) in sorted(ranges.items()))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def insert_batch(client: Any, batch: Batch, token: str) -> int:
    """Insert every non-empty table of ``batch``; returns the rows written. A retry adds rows that FINAL collapses."""
    written = 0
    for table in TABLE_ORDER:
        n = batch.count(table)
        if not n:
            continue
        client.insert(
            qualified(table),
            batch.columns[table],
            column_names=_COLUMN_NAMES[table],
            column_type_names=_WIRE_TYPES[table],
            column_oriented=True,
            settings={"insert_deduplication_token": f"{token}:{table}", "async_insert": 0},
        )
        written += n
    return written


def open_for_writing(dsn: str) -> Any:
    """A client for ``dsn`` with the schema migrated and the client's lazy imports done; raises while down."""
    from rankstream.sinks.store.migrations import migrate

    client = open_store(dsn)
    applied = migrate(client)
    if applied:
        log.info("sink: applied migrations %s", ", ".join(applied))
    prepare_client(client)
    return client


class BatchWriter:
    """Builds the rows of decoded messages and inserts them through one client (``client`` is set once open).

    The run cache is how rows get their team: raw events carry it only in rank
    0's run_start, so the writer remembers each run's row and asks the store
    for runs whose team it does not know (once per :data:`NEGATIVE_LOOKUP_S` for
    unknown ones). Rows built without a team are re-stamped once it is known
    (``teamless``, :meth:`restamp`).
    """

    def __init__(self, client: Any = None) -> None:
        self.client = client
        self.runs = RunCache()
        self.teamless = TeamlessRuns()
        self.owners = Owners()  # runs claimed by a team whose row the run cache lacks (.ownership)
        self._unknown_runs: dict[str, float] = {}
        self._restamp_check_at = 0.0

    def team_of(self, run_id: str) -> str:
        """The run's team as this sink knows it (its cached ``runs`` row, else a claim it saw); '' if unknown."""
        return self.runs.team(run_id) or self.owners.get(run_id)

    def unknown_runs(self, items: list[Item], teams: list[str] | None = None) -> list[str]:
        """Runs of ``items`` whose team this sink does not know (and that were not looked up lately).

        With ``teams`` (a team mode: the team of each item's topic) every run needs its owner,
        also one whose run_start is in ``items``, and an alert's run; otherwise a run
        whose run_start is in ``items`` gets its team from it, and alerts carry their own.
        """
        now = time.monotonic()
        negative = self._unknown_runs
        if teams and any(teams):
            wanted = {rec["run_id"] for (_, rec), team in zip(items, teams, strict=True) if team}
        else:
            starts = {rec["run_id"] for kind, rec in items if kind == "event" and rec["kind"] == "run_start"}
            wanted = {rec["run_id"] for kind, rec in items if kind != "alert" or marks_lost(rec)} - starts
        return sorted(
            run_id
            for run_id in wanted
            if not self.team_of(run_id) and now - negative.get(run_id, -1e9) > NEGATIVE_LOOKUP_S
        )

    def resolve_runs(self, unknown: list[str], *, rows: bool = False) -> None:
        """Make the run cache know the team of the ``unknown`` runs (one store query, two in a rare race).

        The store's row is at least as new as the cached one (the caller lets no
        insert run meanwhile). When its latest version has no team (a run_end
        stored by a sink that had not seen the run_start), an older version's team is used.
        With ``rows`` (a team mode, where a run's owner matters) a run the ``runs`` table
        has no team for is looked up in the ``events`` and ``steps`` rows too (a run
        whose run_start was never stored still belongs to the team that stored its rows).
        """
        if not unknown:
            return
        now = time.monotonic()
        found = lookup_runs(self.client, unknown)
        hidden = [run_id for run_id, row in found.items() if not row["team"]]
        for run_id, team in (lookup_teams(self.client, hidden) if hidden else {}).items():
            found[run_id]["team"] = team
        for run_id in unknown:
            if run_id in found:
                self.runs.put(found[run_id])
        if rows:
            missing = [run_id for run_id in unknown if not self.team_of(run_id)]
            for run_id, team in (lookup_row_teams(self.client, missing) if missing else {}).items():
                self.owners.put(run_id, team)
        for run_id in unknown:
            if self.team_of(run_id):
                self._unknown_runs.pop(run_id, None)
            else:
                self._unknown_runs[run_id] = now
        if len(self._unknown_runs) > 100_000:
            self._unknown_runs.clear()

    def refuse_foreign(self, items: list[Item], teams: list[str]) -> list[tuple[int, str]]:
        """Items whose run belongs to another team than their topic's, ``(index, reason)``; the other runs
        are now their team's (:mod:`.ownership`). A run this sink knows without a team is adopted: its
        team-less rows are re-stamped."""
        claims = [(rec["run_id"], team) for (_, rec), team in zip(items, teams, strict=True)]
        runs = {run_id for run_id, team in claims if team}
        refused, claimed = claim_runs(claims, {run_id: self.team_of(run_id) for run_id in runs})
        for run_id, team in claimed.items():
            self.owners.put(run_id, team)
            row = self.runs.get(run_id)
            if row is not None and not row["team"]:
                self.runs.put({**row, "team": team})
                self.teamless.note([run_id], time.monotonic())
        return [(index, foreign_reason(claims[index][0])) for index in refused]

    def build(self, items: list[Item], teams: list[str] | None = None) -> Batch:
        """Rows of every table for ``items``, with each touched run's latest ``runs`` row.

        Run status changes are applied in message order (run_start, run_end, a
        ``run_lost`` alert, any event of a lost run, which may bring it back)
        before the other rows are built, so run_start metadata (the team) applies
        to the whole batch; one ``runs`` row per touched run carries the outcome.
        ``teams`` (a team mode): each item's team, put on every row of it
        (:meth:`refuse_foreign` has kept out the items of another team's runs).
        """
        runs = self.runs
        teams = teams or [""] * len(items)
        events: list[dict[str, Any]] = []
        event_teams: list[str] = []
        lifecycle: list[tuple[Item, str]] = []
        others: list[tuple[Item, str]] = []
        # Runs whose events may change their status: lost ones, and those a run_lost alert of this batch names.
        watched = runs.lost | {rec["run_id"] for kind, rec in items if kind == "alert" and marks_lost(rec)}
        for item, own in zip(items, teams, strict=True):
            kind, rec = item
            if kind != "event":
                others.append((item, own))
                if kind == "alert" and marks_lost(rec):
                    lifecycle.append((item, own))
                continue
            events.append(rec)
            event_teams.append(own)
            event_kind = rec["kind"]
            if event_kind == "run_start" or event_kind == "run_end" or (watched and rec["run_id"] in watched):
                lifecycle.append((item, own))
        touched: dict[str, dict[str, Any]] = {}
        for item, own in lifecycle:
            row = self._run_row(item)
            if row is not None:
                if own:
                    row["team"] = own
                runs.put(row)
                touched[row["run_id"]] = row
        batch = Batch()
        teamless = {run_id for run_id, row in touched.items() if not row["team"]}
        for row in touched.values():
            batch.add_run(row)
        if events and any(event_teams):  # a team mode: every event has its topic's team
            batch.add_events(events, event_teams)
        elif events:
            team = {run_id: runs.team(run_id) for run_id in {rec["run_id"] for rec in events}}
            teamless.update(run_id for run_id, name in team.items() if not name)
            batch.add_events(events, [team[rec["run_id"]] for rec in events])
        for (kind, rec), own in others:
            if kind == "step":
                step_team = own or runs.team(rec["run_id"])
                if not step_team:
                    teamless.add(rec["run_id"])
                batch.add_step(rec, step_team)
            else:
                batch.add_alert(rec)
        if teamless:
            self.teamless.note(teamless, time.monotonic())
        return batch

    # ------------------------------------------------------------------ re-stamping (rankstream.sinks.teams)

    def adopt_stored_teamless(self) -> int:
        """Follow the runs with team-less rows in the store (left by a sink that stopped before re-stamping)."""
        found = stored_teamless_runs(self.client)
        self.teamless.note(found, time.monotonic())
        return len(found)

    def restamp_due(self, *, force: bool = False) -> bool:
        """True when a followed run's team is known or its store lookup is due (checked every RESTAMP_CHECK_S)."""
        if not self.teamless:
            return False
        now = time.monotonic()
        if not force and now < self._restamp_check_at:
            return False
        self._restamp_check_at = now + RESTAMP_CHECK_S
        return self.teamless.due_soon(now) or any(self.team_of(run_id) for run_id in self.teamless.runs())

    def restamp(self) -> int:
        """Look up the due teams, then re-stamp the rows of every followed run whose team is known.

        Store calls: the caller retries the whole call (idempotent) and lets no insert run meanwhile.
        Returns the number of runs re-stamped.
        """
        now = time.monotonic()
        given_up = self.teamless.expired(now)
        if given_up:
            example = given_up[0]
            log.warning(
                "sink: no team for %d run(s) after %.0f s (e.g. %s): rows kept with team ''",
                len(given_up),
                GIVE_UP_S,
                example,
            )
        due = [run_id for run_id in self.teamless.due(now) if not self.team_of(run_id)]
        if due:
            self.resolve_runs(due)
        ready = {run_id: team for run_id in self.teamless.runs() if (team := self.team_of(run_id))}
        restamp(self.client, ready)
        self.teamless.forget(ready)
        if ready:
            from_store = sum(1 for run_id in due if run_id in ready)
            log.info(
                "sink: re-stamped the rows of %d run(s) stored before their team was known (%d found in the store)",
                *(len(ready), from_store),
            )
        return len(ready)

    def _run_row(self, item: Item) -> dict[str, Any] | None:
        """The ``runs`` row after one lifecycle message, or None when it changes nothing."""
        kind, rec = item
        previous = self.runs.get(rec["run_id"])
        if kind == "alert":
            return run_row_lost(previous, rec)
        if rec["kind"] == "run_start":
            return merge_run_start(previous, run_row_from_start(rec))
        if rec["kind"] == "run_end":
            return run_row_from_end(previous, rec)
        return run_row_revived(previous, rec)

    def insert(self, batch: Batch, token: str) -> int:
        """One insert attempt; returns the rows written. A refusal of the rows themselves raises :class:`Rejected`."""
        try:
            return insert_batch(self.client, batch, token)
        except Exception as exc:
            reason = rejection_reason(exc)
            if reason is None:
                raise
            raise Rejected(reason) from exc

    def insert_around_refused(
        self,
        items: list[Item],
        token: str,
        retry: Callable[[Callable[[], int]], int],
        teams: list[str] | None = None,
    ) -> tuple[int, list[tuple[int, str]]]:
        """Store ``items`` in halves around those the store refuses; returns the rows stored and the refused items.

        Each part is inserted through ``retry`` (the caller's wait for a store
        that is down) with a token of its own; refused items come back as
        ``(index in items, reason)``.
        """
        stored = 0

        def insert(lo: int, hi: int) -> None:
            nonlocal stored
            part = self.build(items[lo:hi], teams[lo:hi] if teams else None)
            retry(lambda: self.insert(part, f"{token}:{lo}-{hi}"))
            stored += part.rows

        refused = find_rejected(len(items), insert)
        return stored, refused
