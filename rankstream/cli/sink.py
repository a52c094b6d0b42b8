"""``rankstream sink``: persist events, aligned steps and alerts to the store (long-running)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import TYPE_CHECKING, Annotated

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

if TYPE_CHECKING:
    from rankstream.sinks.worker import SinkWorker

log = logging.getLogger("rankstream.sink")


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
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus /metrics on this port (0: any free port, printed) [default off]"),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address /metrics binds to")] = "127.0.0.1",
    team: Annotated[
        str | None,
        typer.Option(
            help="The team whose topics this sink serves (with --prefix <prefix>.<team>), or '*': one sink for "
            "every team's <prefix>.<team>.* topics, each record's team from its topic [env RANKSTREAM_TEAM]",
        ),
    ] = None,
    topic_refresh_seconds: Annotated[
        float,
        typer.Option(min=0.1, help="How often the topic list is refreshed: a new team's topics are read this soon"),
    ] = 30.0,
) -> None:
    """Consume the contract topics into ClickHouse/chDB until SIGTERM/SIGINT (then flush, commit, exit 0)."""
    from kafka.errors import KafkaError

    from rankstream.sinks.store import StoreError
    from rankstream.sinks.worker import SinkWorker

    settings = load_settings(
        store_dsn=dsn,
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        state_dir=state_dir,
        http_port=http_port,
        team=team,
    )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    for name in ("kafka", "clickhouse_connect", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.CRITICAL)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("sink: %s received; flushing", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        worker = SinkWorker(
            settings,
            batch_rows=batch_rows,
            batch_seconds=batch_seconds,
            group_id=group,
            topic_refresh_s=topic_refresh_seconds,
        )
        if metrics_port is not None:
            _serve_metrics(worker, metrics_port, metrics_host)
        _run(worker, settings.http_port, stop)
    except StoreError as exc:
        fail(str(exc), EXIT_CONFIG)
    except KafkaError as exc:
        fail(f"kafka at {settings.bootstrap_servers} unavailable: {exc}", EXIT_SERVICE)


def _serve_metrics(worker: SinkWorker, port: int, host: str) -> None:
    from rankstream.sinks.prom import SinkMetrics

    metrics = SinkMetrics(worker)
    worker.on_stored = metrics.insert_latency.observe
    try:
        served = metrics.serve(port, host)
    except OSError as exc:
        fail(f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}", EXIT_CONFIG)
    log.info("sink: metrics at http://%s:%d/metrics", host, served)


def _run(worker: SinkWorker, http_port: int, stop: threading.Event) -> None:
    """Open the store, serve it over HTTP when this process owns it (an embedded chDB), consume until ``stop``.

    chDB opens a data directory in one process only, so while the sink runs it
    is the one that serves ``rankstream sql``, dashboards and other readers.
    """
    try:
        if not worker.open(stop):
            return
        with contextlib.ExitStack() as serving:
            if worker.dsn.embedded:
                from rankstream.sinks.store.httpd import HOST, serve_store

                assert worker.dsn.path is not None
                port = serving.enter_context(serve_store(worker.dsn.path, http_port))
                log.info("sink: serving the store's HTTP interface on http://%s:%d", HOST, port)
            worker.run(stop)
    finally:
        worker.close()


def register(app: typer.Typer) -> None:
    app.command("sink")(sink)
