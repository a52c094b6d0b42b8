"""``rankstream worker``: the Faust stream job (align, aggregate, detect, alert)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rankstream.cli.common import EXIT_CONFIG, EXIT_SERVICE, BootstrapOpt, PrefixOpt, StateDirOpt, fail, load_settings

if TYPE_CHECKING:
    from rankstream.stream_jobs.app import StreamJob


def worker(
    bootstrap: BootstrapOpt = None,
    prefix: PrefixOpt = None,
    state_dir: StateDirOpt = None,
    team: Annotated[
        str | None,
        typer.Option(
            help="The team whose topics <prefix>.<team>.* this worker serves, or '*': one shared worker for "
            "every team's <prefix>.<team>.events, each run's team taken from its topic [env RANKSTREAM_TEAM]"
        ),
    ] = None,
    rules: Annotated[Path | None, typer.Option(help="Rules YAML (defaults + per-team/run overrides)")] = None,
    group: Annotated[
        str | None,
        typer.Option(
            help="Consumer group id [default <prefix>-stream, <prefix>.<team>-stream for one team, "
            "<prefix>.teams-stream with --team '*']"
        ),
    ] = None,
    session_timeout: Annotated[
        float, typer.Option(help="Seconds before a dead worker's partitions move to another worker")
    ] = 15.0,
    topic_refresh_seconds: Annotated[
        float,
        typer.Option(
            "--topic-refresh-seconds",
            "--discover-every",
            help="With --team '*': seconds between two looks for new teams' events topics (as the sink's and "
            "the notifier's; --discover-every is its former name)",
        ),
    ] = 15.0,
    loglevel: Annotated[
        str, typer.Option(help="Log level of Faust and Kafka (the worker's stats lines show at warning too)")
    ] = "warning",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus /metrics on this port (0: any free port; the URL is printed) [default off]"
        ),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address /metrics binds to")] = "127.0.0.1",
) -> None:
    """Consume <prefix>.events, publish <prefix>.steps and <prefix>.alerts (invalid input -> <prefix>.dlq).

    Several workers with the same group split the partitions; a crashed worker's
    partitions are re-read from the last committed offset by the others. With
    --team '*' it consumes every <prefix>.<team>.events (new teams' topics are
    picked up while it runs) and publishes to that team's topics.
    """
    from rankstream.errors import ServiceUnavailable
    from rankstream.kafka_admin import broker_ready
    from rankstream.stream_jobs.app import create_app
    from rankstream.stream_jobs.core import RulesError, load_rules
    from rankstream.stream_jobs.detector_state import ensure_state_topic
    from rankstream.stream_jobs.runner import StreamWorkerRunner

    settings = load_settings(bootstrap_servers=bootstrap, topic_prefix=prefix, state_dir=state_dir, team=team)
    if topic_refresh_seconds <= 0:
        fail("--topic-refresh-seconds must be > 0", EXIT_CONFIG)
    try:
        rules_config = load_rules(rules)
    except RulesError as exc:
        fail(str(exc), EXIT_CONFIG)
    first = settings.bootstrap_servers.split(",")[0]
    if settings.security_protocol == "PLAINTEXT" and not broker_ready(first, timeout_s=10.0):
        fail(f"cannot reach Kafka at {settings.bootstrap_servers}", EXIT_SERVICE)
    if not settings.all_teams:
        try:
            ensure_state_topic(settings)
        except ServiceUnavailable as exc:
            fail(str(exc), EXIT_SERVICE)
    job = create_app(settings, rules_config, group_id=group, discover_every_s=topic_refresh_seconds)
    if settings.all_teams:
        _wait_for_a_team(job, topic_refresh_seconds)
    app = job.app
    app.conf.broker_session_timeout = session_timeout
    app.conf.broker_heartbeat_interval = min(3.0, session_timeout / 4)
    if metrics_port is not None:
        try:
            served = job.serve_metrics(metrics_port, metrics_host)
        except OSError as exc:
            fail(f"cannot serve /metrics on {metrics_host}:{metrics_port}: {exc.strerror or exc}", EXIT_CONFIG)
        typer.echo(f"rankstream worker: metrics at http://{metrics_host}:{served}/metrics", err=True)
    if settings.all_teams:
        every = f"{settings.topic_prefix}.<team>"
        source = f"{every}.events -> {every}.steps, {every}.alerts ({len(job.lanes)} teams now)"
    else:
        source = f"{settings.topics.events} -> {settings.topics.steps}, {settings.topics.alerts}"
    typer.echo(f"rankstream worker: {source} (group {app.conf.id}, kafka {settings.bootstrap_servers})", err=True)
    StreamWorkerRunner(app, loglevel=loglevel).execute_from_commandline()


def _wait_for_a_team(job: StreamJob, every_s: float) -> None:
    """A shared worker starts once some team's events topic exists (Kafka refuses an empty subscription)."""
    from rankstream.errors import one_line

    said = False
    while True:
        try:
            if job.discover_teams_now() or job.lanes:
                return
        except Exception as exc:  # kafka-python's errors: refused (ACLs), unreachable
            fail(f"cannot list the team topics on {job.settings.bootstrap_servers}: {one_line(exc)}", EXIT_SERVICE)
        if not said:
            said = True
            typer.echo(
                f"rankstream worker: no team events topic {job.settings.topic_prefix}.<team>.events yet; waiting",
                err=True,
            )
        time.sleep(every_s)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
