"""``rankstream store``: migrate the schema, serve an embedded store alone, manage its team users (docs/access.md)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
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
    from rankstream.sinks.store.query import local_client

    settings = load_settings(store_dsn=dsn, state_dir=state_dir)
    quiet_client_logs()
    ttl_days = _parse_ttl(ttl or [])
    try:
        parsed = parse_dsn(settings.dsn)
        client = None
        if parsed.embedded and parsed.path is not None:
            server = portfile.find_server(parsed.path)
            if server is not None:
                client = local_client(parsed.path, server)
        client = client or open_store(settings.dsn)
        applied = migrate(client, ttl_days)
    except StoreError as exc:
        fail(str(exc), EXIT_SERVICE)
    except Exception as exc:
        fail(f"migration failed: {str(exc).strip().splitlines()[0][:300]}")
    typer.echo(f"applied: {', '.join(applied)}" if applied else "store schema is up to date")


def _store_path(path: str | None, dsn: str | None, state_dir: str | None) -> Path:
    """The embedded store directory: ``--path``, else the chdb:// DSN of the settings."""
    import os

    from rankstream.sinks.store import StoreError, parse_dsn

    if path:
        return Path(os.path.realpath(path))
    settings = load_settings(store_dsn=dsn, state_dir=state_dir)
    try:
        parsed = parse_dsn(settings.dsn)
    except StoreError as exc:
        fail(str(exc), EXIT_CONFIG)
    if not parsed.embedded or parsed.path is None:
        fail(f"store {settings.dsn.split('@')[-1]!r} is a server, not an embedded store (use --path DIR)", EXIT_CONFIG)
    return parsed.path


PathOpt = Annotated[str | None, typer.Option("--path", help="Embedded store directory [default: the chdb:// DSN]")]


@store_app.command("serve")
def serve_cmd(
    path: PathOpt = None,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0: any free port)")] = 8123,
    tls_cert: Annotated[str | None, typer.Option("--tls-cert", help="Serve HTTPS with this certificate")] = None,
    tls_key: Annotated[str | None, typer.Option("--tls-key", help="... and this private key")] = None,
    dsn: DsnOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Serve an embedded store's ClickHouse HTTP interface alone (no Kafka), e.g. to browse it after a sink."""
    from rankstream.sinks.store import portfile, users
    from rankstream.sinks.store.httpd import HOST, serve_store

    store = _store_path(path, dsn, state_dir)
    if bool(tls_cert) != bool(tls_key):
        fail("--tls-cert and --tls-key go together", EXIT_CONFIG)
    if portfile.find_server(store) is not None:
        fail(f"store {store} is already served by another process (see {portfile.port_file(store)})", EXIT_SERVICE)
    store.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None
    try:
        with serve_store(store, port, tls) as bound:
            scheme = "https" if tls else "http"
            typer.echo(f"serving {store} on {scheme}://{HOST}:{bound} (admin: user default, password in "
                       f"{users.users_file(store)})", err=True)  # fmt: skip
            stop.wait()
    except OSError as exc:
        fail(f"cannot serve {store}: {exc}", EXIT_SERVICE)
    except Exception as exc:  # chDB refuses a directory another process has open
        text = str(exc).strip()
        if "lock" in text.lower() or "EmbeddedServer" in text:
            fail(f"store {store} is in use by another process (a sink or another server owns it)", EXIT_SERVICE)
        fail(f"cannot serve {store}: {text.splitlines()[0][:300] if text else type(exc).__name__}", EXIT_SERVICE)


@store_app.command("rbac")
def rbac_cmd(
    config: Annotated[Path, typer.Argument(help="Access config (YAML), e.g. infra/clickhouse/access.yaml")],
) -> None:
    """Print the ClickHouse server's roles, row policies and users for every team of CONFIG (SQL)."""
    from rankstream.errors import ConfigError
    from rankstream.sinks.store.rbac import load_config, render

    try:
        typer.echo(render(load_config(config)), nl=False)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)


user_app = typer.Typer(help="Read-only team users of an embedded store's HTTP interface.", no_args_is_help=True)
store_app.add_typer(user_app, name="user")


@user_app.command("add")
def user_add_cmd(
    team: Annotated[str, typer.Argument(help="The team whose rows the user may read")],
    name: Annotated[str | None, typer.Option("--name", help="User name [default: TEAM_ro]")] = None,
    path: PathOpt = None,
    dsn: DsnOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Create a team's read-only user (or give it a new password); prints the password once."""
    from rankstream.errors import ConfigError
    from rankstream.sinks.store import users

    store = _store_path(path, dsn, state_dir)
    try:
        user, password = users.add_team_user(store, team, name)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    typer.echo(f"user {user} (team {team}, read-only); password: {password}")


@user_app.command("list")
def user_list_cmd(path: PathOpt = None, dsn: DsnOpt = None, state_dir: StateDirOpt = None) -> None:
    """The store's users (never their passwords)."""
    from rankstream.sinks.store import users

    store = _store_path(path, dsn, state_dir)
    loaded = users.load(store)
    typer.echo(f"{users.ADMIN}\tadmin")
    for user in sorted((loaded.teams if loaded else {}).values(), key=lambda u: u.name):
        typer.echo(f"{user.name}\tteam {user.team} (read-only)")


@user_app.command("remove")
def user_remove_cmd(
    name: Annotated[str, typer.Argument(help="User name")],
    path: PathOpt = None,
    dsn: DsnOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Remove a team user (a running server stops accepting it at its next request)."""
    from rankstream.sinks.store import users

    if not users.remove_user(_store_path(path, dsn, state_dir), name):
        fail(f"no team user {name!r}", EXIT_CONFIG)
    typer.echo(f"removed {name}")


def register(app: typer.Typer) -> None:
    app.add_typer(store_app, name="store")
