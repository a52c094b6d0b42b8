"""``rankstream sink``: persist events, aligned steps and alerts to the store (long-running)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated

import typer

from rankstream.cli.common import (
    EXIT_CONFIG,
    EXIT_SERVICE,
    BootstrapOpt,
    DsnOpt,
    PrefixOpt,
    StateDirOpt,
    fail,
    load_settings,
)


def sink(
    dsn: DsnOpt = None,
    bootstrap: BootstrapOpt = None,
    prefix: PrefixOpt = None,
    state_dir: StateDirOpt = None,
    http_port: Annotated[
        int | None,
        typer.Option(
            "--http-port",
            help="HTTP interface port for a chdb:// store (0: any free port) [env RANKSTREAM_HTTP_PORT, default 8123]",
        ),
    ] = None,
    batch_rows: Annotated[int, typer.Option(min=1, help="Flush after this many rows")] = 50_000,
    batch_seconds: Annotated[float, typer.Option(min=0.01, help="Flush after this many seconds")] = 1.0,
    group: Annotated[str | None, typer.Option(help="Consumer group [default <prefix>.sink]")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging")] = False,
) -> None:
    """Consume the contract topics into ClickHouse/chDB until SIGTERM/SIGINT (then flush, commit, exit 0)."""
    from kafka.errors import KafkaError

    from rankstream.sinks.store import StoreError
    from rankstream.sinks.worker import SinkWorker

    settings = load_settings(
        store_dsn=dsn, bootstrap_servers=bootstrap, topic_prefix=prefix, state_dir=state_dir, http_port=http_port
    )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    for name in ("kafka", "clickhouse_connect", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.CRITICAL)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("rankstream.sink").info("sink: %s received; flushing", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        worker = SinkWorker(settings, batch_rows=batch_rows, batch_seconds=batch_seconds, group_id=group)
        worker.run(stop)
    except StoreError as exc:
        fail(str(exc), EXIT_CONFIG)
    except KafkaError as exc:
        fail(f"kafka at {settings.bootstrap_servers} unavailable: {exc}", EXIT_SERVICE)


def register(app: typer.Typer) -> None:
    app.command("sink")(sink)
