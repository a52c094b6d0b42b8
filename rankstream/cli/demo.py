"""``rankstream demo``: the whole system on one machine, with a real multi-rank torch job."""

from __future__ import annotations

from typing import Annotated

import typer

from rankstream.cli.common import StateDirOpt, fail, load_settings


def demo(
    state_dir: StateDirOpt = None,
    keep: Annotated[bool, typer.Option("--keep", help="Leave Kafka, the worker and the sink running")] = False,
    steps: Annotated[int, typer.Option(min=200, help="Training steps")] = 300,
    ranks: Annotated[int, typer.Option(min=4, max=8, help="Data-parallel ranks (gloo, CPU)")] = 4,
    port: Annotated[int | None, typer.Option(help="Kafka port [env RANKSTREAM_KAFKA_PORT, default 9092]")] = None,
) -> None:
    """Start Kafka, the stream worker and the sink, train a 4-rank DDP job with injected faults
    (loss spike, straggler, NaN, killed rank), show steps and alerts live, then query the store."""
    from rankstream.dev.demo.runner import DemoError, run_demo

    settings = load_settings(state_dir=state_dir or ".rankstream/demo", kafka_port=port)
    try:
        code = run_demo(settings, keep=keep, steps=steps, ranks=ranks)
    except DemoError as exc:
        fail(str(exc), exc.exit_code)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
