"""A run's detector state as plain JSON, and back: what a new owner of the partition resumes from.

Kept apart from :mod:`.run` so that the run's logic and its saved form each stay readable;
every key a newer version adds is read with a default, so a state saved by an older worker loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rankstream.stream_jobs.core.alerts import LoggingCadence

if TYPE_CHECKING:
    from rankstream.stream_jobs.core.run import RunState


def export_run(run: RunState) -> dict[str, Any]:
    """The run's detector state as plain JSON (saved to the compacted state topic by the worker)."""
    return {
        "v": 1,
        "run_id": run.run_id,
        "team": run.team,
        "run_name": run.run_name,
        "meta": dict(run.meta),
        "precision": run.precision,
        "has_stage": run.has_stage,
        "prev_lr": run.prev_lr,
        "last_event_ts": run.last_event_ts,
        "ended_at": run.ended_at,
        "restart_tags": list(run.restart_tags),
        "attempt_ranks": {str(rank): inc for rank, inc in run.attempt_ranks.items()},
        "inc_attempt": [[rank, inc, attempt] for (rank, inc), attempt in run.inc_attempt.items()],
        "expect_relaunch": run.expect_relaunch,
        "clock_offsets": run.skew.to_state(),
        "aligner": run.aligner.to_state(),
        "liveness": run.liveness.to_state(),
        "loss": run.loss.to_state(),
        "grad": run.grad.to_state(),
        "ranks": run.rank_rules.to_state(),
        "evals": run.evals.to_state(),
        "cooldowns": run.alerter.to_state(),
        "open_alerts": run.alerter.open.to_state(),
        "cadence": run.alerter.cadence.to_state(),
    }


def import_run(run: RunState, s: dict[str, Any]) -> None:
    """Restore what :func:`export_run` saved (missing keys: states written by older workers)."""
    run.meta = dict(s.get("meta", {}))
    run.team = s.get("team", "")
    run.alerter.team = run.team
    run.run_name = s.get("run_name", "")
    if run.run_name:
        run.label = f"run {run.run_name} ({run.run_id})"
    run._apply_rules()
    run.precision = s.get("precision", "")
    run.has_stage = bool(s.get("has_stage", False))
    run.prev_lr = s.get("prev_lr")
    run.last_event_ts = max(run.last_event_ts, float(s.get("last_event_ts", 0.0)))
    run.ended_at = s.get("ended_at")
    run.restart_tags = list(s.get("restart_tags", []))
    run.attempt_ranks = {int(rank): str(inc) for rank, inc in s.get("attempt_ranks", {}).items()}
    run.inc_attempt = {(int(rank), str(inc)): int(attempt) for rank, inc, attempt in s.get("inc_attempt", [])}
    run.expect_relaunch = bool(s.get("expect_relaunch", False))
    run.skew.load_state(s.get("clock_offsets", {}))
    run.aligner.load_state(s["aligner"])
    run.world_size = run.aligner.world_size
    run.liveness.load_state(s["liveness"])
    run.loss.load_state(s["loss"])
    run.grad.load_state(s["grad"])
    run.rank_rules.load_state(s["ranks"])
    run.evals.load_state(s.get("evals", {}))
    run.alerter.load_state(s["cooldowns"])
    run.alerter.open.load_state(s.get("open_alerts", []))
    run.alerter.cadence = LoggingCadence(s.get("cadence"))


__all__ = ["export_run", "import_run"]
