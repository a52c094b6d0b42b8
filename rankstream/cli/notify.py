"""``rankstream notify``: alerts to AlertManager and chat webhooks (long-running sink of the alerts topics)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from rankstream.cli.common import EXIT_CONFIG, EXIT_SERVICE, BootstrapOpt, PrefixOpt, error_line, fail, load_settings
from rankstream.errors import ConfigError

log = logging.getLogger("rankstream.notify")


def notify(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Notify YAML: receivers, routes, grouping, retries (docs/notify.md)"),
    ] = None,
    alertmanager: Annotated[
        str | None,
        typer.Option(help="AlertManager base URL, e.g. http://127.0.0.1:9093 (without --config: every alert there)"),
    ] = None,
    bootstrap: BootstrapOpt = None,
    prefix: PrefixOpt = None,
    team: Annotated[
        str | None,
        typer.Option(
            "--team",
            help="One team's alerts (<prefix>.<team>.alerts), or '*': every team's, each alert's team from its"
            " topic [env RANKSTREAM_TEAM]",
        ),
    ] = None,
    topic_refresh_seconds: Annotated[
        float,
        typer.Option(
            "--topic-refresh-seconds",
            min=1.0,
            help="With --team '*': how often new teams' alerts topics are looked for",
        ),
    ] = 30.0,
    group: Annotated[
        str | None,
        typer.Option(
            help="Consumer group [default <prefix>.notify; <prefix>.<team>.notify; '*': <prefix>.teams-notify]"
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Validate the configuration, print its receivers, exit")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging")] = False,
) -> None:
    """Send alerts to AlertManager and chat until SIGTERM/SIGINT (then deliver what is queued, commit, exit 0).

    Reads <prefix>.alerts, or with --team one team's <prefix>.<team>.alerts, or with --team '*' every team's
    (a new team's topic is read within --topic-refresh-seconds). Offsets are committed only after delivery;
    deliveries that keep failing go to the dlq beside their alerts topic with the reason.
    """
    from rankstream.kafka_admin import broker_ready
    from rankstream.sinks.notify.config import alertmanager_only, load_config

    settings = load_settings(bootstrap_servers=bootstrap, topic_prefix=prefix, team=team)
    try:
        if config is not None:
            notify_config = load_config(config)
        elif alertmanager:
            notify_config = alertmanager_only(alertmanager)
        else:
            raise ConfigError("give --config FILE or --alertmanager URL")
    except ConfigError as exc:
        fail(error_line(exc), EXIT_CONFIG)
    if check:
        for receiver in notify_config.receivers.values():
            typer.echo(f"{receiver.name}: {receiver.kind}{' (signed)' if receiver.secret else ''}")
        return
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    for name in ("kafka", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.CRITICAL)
    first = settings.bootstrap_servers.split(",")[0]
    if settings.security_protocol == "PLAINTEXT" and not broker_ready(first, timeout_s=10.0):
        fail(f"cannot reach Kafka at {settings.bootstrap_servers}", EXIT_SERVICE)
    from kafka.errors import KafkaError

    from rankstream.sinks.notify.worker import Notifier

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("notify: %s received; delivering what is queued", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        Notifier(settings, notify_config, group_id=group, topic_refresh_s=topic_refresh_seconds).run(stop)
    except KafkaError as exc:
        fail(f"kafka at {settings.bootstrap_servers} unavailable: {exc}", EXIT_SERVICE)


def register(app: typer.Typer) -> None:
    app.command("notify")(notify)
