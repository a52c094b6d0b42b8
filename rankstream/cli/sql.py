"""``rankstream sql``: run SQL against the store (live through a running sink's HTTP interface)."""

from __future__ import annotations

import contextlib
import csv
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import typer

from rankstream.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_SERVICE, DsnOpt, StateDirOpt, fail, load_settings

FORMATS = ("table", "json", "csv")


def _cell(value: Any) -> Any:
    """A value as JSON/CSV can hold it (non-finite floats as the contract's strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [_cell(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _cell(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """Rows as an aligned table, JSON (a list of objects) or CSV with a header."""
    if fmt == "json":
        from rankstream.schema import dumps

        return dumps([{c: _cell(v) for c, v in zip(columns, row, strict=True)} for row in rows]).decode()
    if fmt == "csv":
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(v) for v in row])
        return buf.getvalue().rstrip("\n")
    text_rows = [[_text(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in text_rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in text_rows]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(_cell(value))
    return str(_cell(value)) if not isinstance(value, str) else value


def run_sql(client: Any, sql: str, fmt: str) -> str:
    """Execute one statement and return what to print."""
    from rankstream.sinks.store import statement_kind

    kind = statement_kind(sql)
    if kind == "raw":
        return client.raw_query(sql.strip().rstrip(";")).decode("utf-8", "replace").rstrip("\n")
    if kind == "query":
        result = client.query(sql.strip().rstrip(";"))
        return render(result.column_names, result.result_rows, fmt)
    client.command(sql.strip().rstrip(";"))
    return "ok"


@contextlib.contextmanager
def store_reader(dsn: str | None, state_dir: str | None) -> Iterator[Any]:
    """A read client for the configured store; store and query errors become one-line exits."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from rankstream.sinks.store import StoreError, connect_reader, error_line, quiet_client_logs

    settings = load_settings(store_dsn=dsn, state_dir=state_dir)
    quiet_client_logs()
    try:
        client, _how = connect_reader(settings.dsn)
    except StoreError as exc:
        fail(str(exc), EXIT_SERVICE)
    try:
        yield client
    except ClickHouseError as exc:
        fail(error_line(exc), EXIT_FAILURE)
    finally:
        client.close()


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}", EXIT_CONFIG)


def sql(
    query: Annotated[str, typer.Argument(help="SQL statement (use '-' to read it from stdin)")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json or csv")] = "table",
    dsn: DsnOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Run a SQL statement against the store and print the result."""
    check_format(fmt)
    if query == "-":
        query = sys.stdin.read()
    if not query.strip():
        fail("empty SQL statement", EXIT_CONFIG)
    with store_reader(dsn, state_dir) as client:
        typer.echo(run_sql(client, query, fmt))


def register(app: typer.Typer) -> None:
    app.command("sql")(sql)
