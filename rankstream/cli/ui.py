"""``rankstream ui``: the web dashboard over the store (through a running sink, or a ClickHouse DSN)."""

from __future__ import annotations

from typing import Annotated

import typer

from rankstream.cli.common import EXIT_CONFIG, EXIT_SERVICE, DsnOpt, StateDirOpt, fail, load_settings


def ui(
    host: Annotated[str, typer.Option(help="Address to listen on (keep 127.0.0.1 unless behind a proxy)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one)")] = 8080,
    login: Annotated[
        bool,
        typer.Option(
            "--login",
            help="Viewers sign in with their store user (HTTP Basic) and every query runs as that user, "
            "so the store's team filters apply; needs a store server (a running sink, store serve, ClickHouse)",
        ),
    ] = False,
    dsn: DsnOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Serve the web dashboard: runs, a run's curves with alert markers and per-rank heatmaps, run comparison."""
    try:
        import clickhouse_connect  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401

        from rankstream.ui.server import serve
    except ImportError as exc:
        fail(f"rankstream ui needs {exc.name}: pip install 'rankstream[sinks,ui]'", EXIT_CONFIG)
    from rankstream.sinks.store import StoreError

    settings = load_settings(store_dsn=dsn, state_dir=state_dir)
    try:
        serve(settings.dsn, host=host, port=port, login=login)
    except StoreError as exc:
        fail(str(exc), EXIT_SERVICE)
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)
