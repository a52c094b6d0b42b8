"""``rankstream stack up|down|status``: the local Kafka broker."""

from __future__ import annotations

from typing import Annotated

import typer

from rankstream.cli.common import EXIT_SERVICE, StateDirOpt, fail, load_settings

stack_app = typer.Typer(help="Start, stop and inspect the local Kafka broker (KRaft, 127.0.0.1).", no_args_is_help=True)


@stack_app.command("up")
def up(
    state_dir: StateDirOpt = None,
    port: Annotated[int | None, typer.Option(help="Broker port [env RANKSTREAM_KAFKA_PORT, default 9092]")] = None,
    partitions: Annotated[
        int | None, typer.Option(help="Partitions per contract topic [env RANKSTREAM_PARTITIONS, default 6]")
    ] = None,
) -> None:
    """Start the broker (no-op when running), wait for readiness, create the contract topics."""
    from rankstream.dev.stack import bootstrap_address, start_broker
    from rankstream.kafka_admin import ensure_topics

    settings = load_settings(state_dir=state_dir, kafka_port=port, partitions=partitions)
    status = start_broker(settings)
    created = ensure_topics(settings, bootstrap=bootstrap_address(settings))
    typer.echo(f"kafka: {status.bootstrap} pid {status.pid} ({status.detail})")
    if created:
        typer.echo(f"topics created: {', '.join(created)}")


@stack_app.command("down")
def down(state_dir: StateDirOpt = None) -> None:
    """Stop the broker started from this state directory (no-op when stopped)."""
    from rankstream.dev.stack import stop_broker

    settings = load_settings(state_dir=state_dir)
    typer.echo("kafka: stopped" if stop_broker(settings) else "kafka: not running")


@stack_app.command("status")
def status(state_dir: StateDirOpt = None) -> None:
    """Show whether the broker runs and answers; exit 3 when it does not."""
    from rankstream.dev.stack import broker_status

    settings = load_settings(state_dir=state_dir)
    st = broker_status(settings)
    typer.echo(f"kafka: {st.bootstrap} {st.detail}" + (f" (pid {st.pid})" if st.pid else ""))
    if not st.ready:
        fail("kafka is not ready", EXIT_SERVICE)


topics_app = typer.Typer(help="Manage the contract topics on the configured Kafka cluster.", no_args_is_help=True)


@topics_app.command("create")
def topics_create(
    partitions: Annotated[
        int | None, typer.Option(help="Partitions per topic [env RANKSTREAM_PARTITIONS, default 6]")
    ] = None,
    prefix: Annotated[str | None, typer.Option(help="Topic prefix [env RANKSTREAM_TOPIC_PREFIX]")] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Bootstrap servers [env RANKSTREAM_BOOTSTRAP_SERVERS]")] = None,
) -> None:
    """Create <prefix>.events/.steps/.alerts/.dlq where missing (replication factor 1 locally)."""
    from kafka.errors import KafkaError

    from rankstream.kafka_admin import ensure_topics

    settings = load_settings(partitions=partitions, topic_prefix=prefix, bootstrap_servers=bootstrap)
    try:
        created = ensure_topics(settings)
    except KafkaError as exc:
        fail(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}", EXIT_SERVICE)
    typer.echo(f"created: {', '.join(created)}" if created else "all topics exist")


def register(app: typer.Typer) -> None:
    app.add_typer(stack_app, name="stack")
    app.add_typer(topics_app, name="topics")
