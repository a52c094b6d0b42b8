"""A run_id belongs to one team: the first team whose topics bring it, or the team the store already has for it.

Every table is keyed by run_id (ReplacingMergeTree), so team b's rows for team a's
run X would replace a's (raw events with the same rank and seq, the ``runs`` row is
last-writer-wins): b would write into a's history. In a team mode (``RANKSTREAM_TEAM``
set, each record's team from its topic) the sink stores a record only when its run
belongs to the record's team or to no team yet; otherwise the record goes to its own
team's dead-letter topic with :func:`foreign_reason` (which never names the owner).
A run stored without a team (rows of the legacy mode, team ``''``) is adopted by the
first team that claims it.

Pure: the owners come from the writer's run cache, :class:`Owners` and store lookups
(:mod:`rankstream.sinks.writer`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence


def foreign_reason(run_id: str) -> str:
    """The dead letter's reason for a record of a run another team owns (the owner is not named)."""
    return f"run_id {run_id!r} belongs to another team"


def claim_runs(claims: Sequence[tuple[str, str]], owners: Mapping[str, str]) -> tuple[list[int], dict[str, str]]:
    """Decide ``claims`` ``(run_id, team)`` in order: ``(indexes refused, runs newly owned: run_id -> team)``.

    ``owners`` holds each run's known owner (``''`` or absent: nobody yet). A claim is
    refused when the run belongs to another team; the first claim of an unowned run makes
    it its team's, so a later claim of another team in the same batch is refused too. A
    claim without a team (the legacy mode) is neither refused nor recorded.
    """
    refused: list[int] = []
    claimed: dict[str, str] = {}
    for index, (run_id, team) in enumerate(claims):
        if not team:
            continue
        owner = claimed.get(run_id) or owners.get(run_id, "")
        if not owner:
            claimed[run_id] = team
        elif owner != team:
            refused.append(index)
    return refused, claimed


class Owners:
    """Bounded run_id -> team map of runs this sink saw claimed (least recently used dropped first).

    Holds the runs the run cache has no row for (only raw steps, aligned steps or
    alerts seen): a dropped entry is looked up in the store again.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._teams: OrderedDict[str, str] = OrderedDict()

    def get(self, run_id: str) -> str:
        team = self._teams.get(run_id, "")
        if team:
            self._teams.move_to_end(run_id)
        return team

    def put(self, run_id: str, team: str) -> None:
        self._teams[run_id] = team
        self._teams.move_to_end(run_id)
        while len(self._teams) > self.capacity:
            self._teams.popitem(last=False)

    def __len__(self) -> int:
        return len(self._teams)


__all__ = ["Owners", "claim_runs", "foreign_reason"]
