"""``rankstream spool flush|status``: deliver or inspect events a reporter left on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rankstream.cli.common import EXIT_CONFIG, EXIT_SERVICE, BootstrapOpt, PrefixOpt, fail, load_settings

spool_app = typer.Typer(
    help="Deliver or inspect spooled events (written while Kafka was unreachable).", no_args_is_help=True
)

DirArg = Annotated[
    Path | None,
    typer.Argument(
        help="Spool directory [default: where reporters spool: RANKSTREAM_SPOOL_DIR, else "
        "<RANKSTREAM_STATE_DIR>/spool, else $XDG_CACHE_HOME/rankstream/spool or ~/.cache/rankstream/spool]",
        show_default=False,
    ),
]


def _check_dir(directory: Path, defaulted: bool) -> bool:
    """False when there is nothing to look at: the default spool root does not exist (yet)."""
    if defaulted and not directory.exists():
        typer.echo(f"no spooled events in {directory}")
        return False
    if not directory.exists():
        fail(f"spool directory {directory} does not exist", EXIT_CONFIG)
    if not directory.is_dir():
        fail(f"{directory} is not a directory", EXIT_CONFIG)
    return True


@spool_app.command("flush")
def flush(directory: DirArg = None, bootstrap: BootstrapOpt = None, prefix: PrefixOpt = None) -> None:
    """Send every orphaned spooled event to Kafka (a run's ranks merged by time), then delete what was acknowledged."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rankstream.producer.flush import flush_spool
    from rankstream.producer.spool import SpoolError, spool_summary

    settings = load_settings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    root = directory if directory is not None else settings.spool_path
    if not _check_dir(root, defaulted=directory is None):
        return
    directory = root
    try:
        before = spool_summary(directory)
    except OSError as exc:
        fail(f"cannot read spool {directory}: {exc}")
    live = [d for d, _, _, owned in before if owned]
    total = sum(n for _, n, _, owned in before if not owned)
    if total == 0:
        typer.echo(
            f"nothing to flush in {directory}" + (f" ({len(live)} spool(s) owned by a live reporter)" if live else "")
        )
        return
    with Progress(
        TextColumn("delivering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as progress:
        task = progress.add_task("flush", total=total)

        def tick(done: int, _total: int) -> None:
            progress.update(task, completed=done)

        try:
            delivered = flush_spool(directory, settings, progress=tick)
        except SpoolError as exc:
            fail(str(exc), EXIT_SERVICE)
        except OSError as exc:
            fail(f"cannot read spool {directory}: {exc}")
    runs = len([d for d, n, _, owned in before if not owned and n])
    typer.echo(
        f"delivered {delivered} events from {runs} spool(s) to {settings.topics.events} at {settings.bootstrap_servers}"
    )
    if live:
        typer.echo(f"skipped {len(live)} spool(s) owned by a live reporter (it delivers them itself)")


@spool_app.command("status")
def status(directory: DirArg = None) -> None:
    """List spools with their undelivered event counts."""
    from rankstream.producer.spool import spool_summary

    root = directory if directory is not None else load_settings().spool_path
    if not _check_dir(root, defaulted=directory is None):
        return
    directory = root
    rows = spool_summary(directory)
    if not rows:
        typer.echo(f"no spooled events in {directory}")
        return
    for path, pending, size, owned in rows:
        owner = "live reporter" if owned else "orphaned"
        typer.echo(f"{path}: {pending} events, {size / 1e6:.1f} MB, {owner}")
    typer.echo(f"total: {sum(r[1] for r in rows)} events in {len(rows)} spool(s)")


def register(app: typer.Typer) -> None:
    app.add_typer(spool_app, name="spool")
