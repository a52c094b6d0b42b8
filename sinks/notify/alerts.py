"""An alert as the notifier sees it: the validated contract record plus its state and the run's name.

Alerts carry ``team`` but not the run's name; the core names a run in its
messages as ``run NAME (RUN_ID)`` once it has seen the run's ``run_start``, so
the name is read from there (an ``run_name`` field on the alert, should the
contract add one, wins). Messages that do not name the run (a "resolved" line)
get the name :class:`RunNames` remembers from the run's earlier alerts. A run
never named has no name: the label is then empty, never guessed.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from rankstream.sinks.records import InvalidRecord, validate_alert

STATES = ("firing", "resolved")


@dataclass(frozen=True, slots=True)
class NotifyAlert:
    """One alert record ready to route and format; ``record`` keeps every contract field."""

    alert_id: str
    run_id: str
    run_name: str
    team: str
    rule: str
    severity: str
    state: str
    step: int
    ranks: tuple[int, ...]
    ts: float
    message: str
    evidence: dict[str, Any]
    #: The team of the topic the alert came through ("" without ``--team``: one topic, whose alerts' own
    #: ``team`` may fill in during a run). Part of every identity (dedup, run names, AlertManager resolves):
    #: ``alert_id`` is derived from the run_id, which two teams may both use.
    source_team: str = ""

    @property
    def resolved(self) -> bool:
        return self.state == "resolved"

    def key(self) -> tuple[str, str, str]:
        """What deduplication compares: the same alert of the same topic's team in the same state is sent once."""
        return (self.source_team, self.alert_id, self.state)


def run_name_from(message: str, run_id: str) -> str:
    """``NAME`` out of ``... run NAME (RUN_ID) ...``; empty when the message does not name the run."""
    match = re.search(r"\brun (.+?) \(" + re.escape(run_id) + r"\)", message)
    return match.group(1) if match else ""


def parse_alert(obj: Any) -> NotifyAlert:
    """Validate a decoded alert message (raises :class:`InvalidRecord` with a one-line reason)."""
    rec = validate_alert(obj)
    state = rec.get("state", "firing")
    if state not in STATES:
        raise InvalidRecord(f"field 'state' must be 'firing' or 'resolved', got {state!r:.40}")
    name = rec.get("run_name")
    if not isinstance(name, str) or not name:
        name = run_name_from(rec["message"], rec["run_id"])
    return NotifyAlert(
        alert_id=rec["alert_id"],
        run_id=rec["run_id"],
        run_name=name,
        team=rec["team"],
        rule=rec["rule"],
        severity=rec["severity"],
        state=state,
        step=rec["step"],
        ranks=tuple(rec["ranks"]),
        ts=rec["ts"],
        message=rec["message"],
        evidence=rec["evidence"],
    )


class RunNames:
    """(team, run_id) -> run name from the alerts that named it (bounded LRU), so that every alert of a run,
    its resolves included, carries the same ``run_name`` label (AlertManager's identity is the label set).
    Keyed by the topic's team too: another team's run of the same run_id must never lend its name."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._names: OrderedDict[tuple[str, str], str] = OrderedDict()

    def fill(self, alert: NotifyAlert) -> NotifyAlert:
        key = (alert.source_team, alert.run_id)
        if alert.run_name:
            self._names[key] = alert.run_name
            self._names.move_to_end(key)
            while len(self._names) > self.size:
                self._names.popitem(last=False)
            return alert
        name = self._names.get(key)
        return replace(alert, run_name=name) if name else alert
