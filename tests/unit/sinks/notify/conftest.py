"""Alert records and a notify configuration shared by the notifier's unit tests."""

from __future__ import annotations

from typing import Any

from rankstream.schema import alert_id
from rankstream.sinks.notify.alerts import NotifyAlert, parse_alert


def alert_record(
    run_id: str = "run-a",
    rule: str = "loss_spike",
    step: int = 120,
    ranks: tuple[int, ...] = (3,),
    *,
    severity: str = "warning",
    team: str = "nlp",
    state: str | None = None,
    name: str = "llama-sft",
    ts: float = 1_700_000_000.0,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "v": 1,
        "alert_id": alert_id(run_id, rule, step, ranks),
        "run_id": run_id,
        "team": team,
        "rule": rule,
        "severity": severity,
        "step": step,
        "ranks": list(ranks),
        "ts": ts,
        "message": f"Loss of run {name} ({run_id}) jumped at step {step}.",
        "evidence": {"loss": 9.5, "baseline": 2.1},
    }
    if state is not None:
        record["state"] = state
    return record


def make_alert(**kwargs: Any) -> NotifyAlert:
    return parse_alert(alert_record(**kwargs))
