"""``rankstream store migrate``: create or upgrade the store's schema (also done at sink start)."""

from __future__ import annotations

from typing import Annotated

import typer

from rankstream.cli.common import EXIT_CONFIG, EXIT_SERVICE, DsnOpt, StateDirOpt, fail, load_settings

store_app = typer.Typer(help="Manage the ClickHouse/chDB store.", no_args_is_help=True)


def _parse_ttl(items: list[str]) -> dict[str, int]:
    from rankstream.sinks.store.migrations import TTL_COLUMNS

    out: dict[str, int] = {}
    for item in items:
        table, _, days = item.partition("=")
        if table not in TTL_COLUMNS or not days.isdigit():
            fail(f"--ttl {item!r}: expected TABLE=DAYS with TABLE one of {', '.join(TTL_COLUMNS)}", EXIT_CONFIG)
        out[table] = int(days)
    return out


@store_app.command("migrate")
def migrate_cmd(
    dsn: DsnOpt = None,
    state_dir: StateDirOpt = None,
    ttl: Annotated[
        list[str] | None, typer.Option("--ttl", help="Retention TABLE=DAYS (0 removes it); repeatable")
    ] = None,
) -> None:
    """Apply pending schema migrations (idempotent) and retention settings."""
    from rankstream.sinks.store import StoreError, open_store, parse_dsn, portfile, quiet_client_logs
    from rankstream.sinks.store.migrations import migrate

    settings = load_settings(store_dsn=dsn, state_dir=state_dir)
    quiet_client_logs()
    ttl_days = _parse_ttl(ttl or [])
    try:
        parsed = parse_dsn(settings.dsn)
        client = None
        if parsed.embedded and parsed.path is not None:
            server = portfile.find_server(parsed.path)
            if server is not None:
                import clickhouse_connect

                client = clickhouse_connect.get_client(host=server[0], port=server[1])
        client = client or open_store(settings.dsn)
        applied = migrate(client, ttl_days)
    except StoreError as exc:
        fail(str(exc), EXIT_SERVICE)
    except Exception as exc:
        fail(f"migration failed: {str(exc).strip().splitlines()[0][:300]}")
    typer.echo(f"applied: {', '.join(applied)}" if applied else "store schema is up to date")


def register(app: typer.Typer) -> None:
    app.add_typer(store_app, name="store")
