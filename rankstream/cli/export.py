"""``rankstream export``: one run to TensorBoard event files or Parquet (zstd) files."""

from __future__ import annotations

from typing import Annotated

import typer

from rankstream.cli.common import EXIT_CONFIG, DsnOpt, StateDirOpt, fail


def export(
    run_id: Annotated[str, typer.Argument(help="The run to export")],
    dest: Annotated[str, typer.Argument(help="Directory (tensorboard, parquet) or s3://bucket/prefix (parquet)")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="tensorboard or parquet")] = "parquet",
    metric: Annotated[
        list[str] | None, typer.Option("--metric", "-m", help="Only these metrics (tensorboard; repeatable)")
    ] = None,
    ranks: Annotated[bool, typer.Option("--ranks/--no-ranks", help="Per-rank series too (tensorboard)")] = True,
    dsn: DsnOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Export a run: TensorBoard event files (mean/min/max per metric, one TensorBoard run per rank)
    or Parquet files of its events, metrics, steps, step metrics, alerts and run row."""
    from rankstream.cli.sql import store_reader
    from rankstream.export import FORMATS, export_run

    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}", EXIT_CONFIG)
    with store_reader(dsn, state_dir) as client:
        summary = export_run(client, run_id, fmt, dest, metrics=metric, ranks=ranks)
    typer.echo(summary.line())


def register(app: typer.Typer) -> None:
    app.command("export")(export)
