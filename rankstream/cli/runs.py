"""``rankstream runs``: the runs of a team (or all teams) seen since some time ago.

Status: ``running``, ``finished`` (or what run_end said, e.g. ``failed``), or
``lost`` (every rank went quiet without run_end). The last step is the step of
the run's latest event: after a resume from a checkpoint it is the resumed
launch's step, not the furthest step an earlier launch reached.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer

from rankstream.cli.common import EXIT_CONFIG, DsnOpt, StateDirOpt, fail

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}

RUNS_SQL = """
SELECT r.run_id AS run_id, r.team AS team, r.run_name AS run_name, r.status AS status,
       r.world_size AS world_size, r.started_at AS started_at, r.ended_at AS ended_at,
       s.last_step AS last_step
FROM rankstream.runs AS r FINAL
LEFT JOIN
(
    SELECT run_id, argMaxIf(step, ts, kind != 'run_start') AS last_step FROM rankstream.events
    WHERE ts >= now64(6) - toIntervalSecond({since:UInt64}) GROUP BY run_id
) AS s ON s.run_id = r.run_id
WHERE r.updated_at >= now64(6) - toIntervalSecond({since:UInt64}) AND ({team:String} = '' OR r.team = {team:String})
ORDER BY r.started_at DESC
"""


def parse_since(text: str) -> int:
    """``7d``, ``12h``, ``30m``, ``2w``, ``45s`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if not match:
        raise ValueError(f"--since {text!r}: expected a number and a unit (s, m, h, d, w), e.g. 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def runs(
    team: Annotated[str | None, typer.Option(help="Only this team's runs")] = None,
    since: Annotated[str, typer.Option(help="Runs updated within this window, e.g. 7d, 12h")] = "7d",
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json or csv")] = "table",
    dsn: DsnOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """List runs (latest status per run) with their last step."""
    from rankstream.cli.sql import check_format, render, store_reader

    try:
        seconds = parse_since(since)
    except ValueError as exc:
        fail(str(exc), EXIT_CONFIG)
    check_format(fmt)
    with store_reader(dsn, state_dir) as client:
        result = client.query(RUNS_SQL, parameters={"since": seconds, "team": team or ""})
        typer.echo(render(result.column_names, result.result_rows, fmt))


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
