"""``rankstream tail RUN_ID`` and ``rankstream alerts``: read the stream jobs' output topics live."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from rankstream.cli.common import EXIT_SERVICE, BootstrapOpt, PrefixOpt, fail, load_settings
from rankstream.config import Settings

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def consume(settings: Settings, topic: str, *, follow: bool, idle_s: float = 1.5) -> Iterator[Any]:
    """Kafka records of ``topic`` from the beginning; without ``follow`` stop once caught up."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(topic, auto_offset_reset="earliest", **settings.kafka_python_kwargs())
    except KafkaError as exc:
        fail(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}", EXIT_SERVICE)
    last_data = time.monotonic()
    try:
        while True:
            batch = consumer.poll(timeout_ms=300)
            for records in batch.values():
                yield from records
            if batch:
                last_data = time.monotonic()
            elif not follow and consumer.assignment() and time.monotonic() - last_data > idle_s:
                ends = consumer.end_offsets(list(consumer.assignment()))
                if all(consumer.position(tp) >= end for tp, end in ends.items()):
                    return
    finally:
        consumer.close()


def documents(settings: Settings, topic: str, *, follow: bool) -> Iterator[tuple[Any, Any]]:
    """``(record, JSON document)`` of ``topic`` (see :func:`consume`); messages that are not JSON are skipped."""
    from rankstream.schema import loads

    for record in consume(settings, topic, follow=follow):
        try:
            yield record, loads(record.value)
        except (ValueError, TypeError):  # not JSON, or an empty message
            continue


def _records(settings: Settings, topic: str, *, follow: bool) -> Iterator[dict[str, Any]]:
    """The JSON documents of ``topic``."""
    for _, doc in documents(settings, topic, follow=follow):
        yield doc


def alerts(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep waiting for new alerts")] = False,
    team: Annotated[str | None, typer.Option(help="Only this team")] = None,
    rule: Annotated[str | None, typer.Option(help="Only this rule")] = None,
    run: Annotated[str | None, typer.Option("--run", help="Only this run_id")] = None,
    output: Annotated[str, typer.Option("--format", help="text or json (one alert per line)")] = "text",
    bootstrap: BootstrapOpt = None,
    prefix: PrefixOpt = None,
) -> None:
    """Print alerts from <prefix>.alerts (deduplicated by alert_id), oldest first; an alert that stopped
    holding shows again as "resolved" (docs/rules.md, "Resolution")."""
    from rich.console import Console

    if output not in ("text", "json"):
        fail(f"--format must be text or json, got {output!r}", 2)
    settings = load_settings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    console = Console(highlight=False)
    seen: set[tuple[str, str]] = set()
    for alert in _records(settings, settings.topics.alerts, follow=follow):
        state = str(alert.get("state", "firing"))
        if (alert.get("alert_id", ""), state) in seen:
            continue
        if (team and alert.get("team") != team) or (rule and alert.get("rule") != rule):
            continue
        if run and alert.get("run_id") != run:
            continue
        seen.add((alert.get("alert_id", ""), state))
        if output == "json":
            print(json.dumps(alert), flush=True)
            continue
        severity = alert.get("severity", "") if state != "resolved" else "resolved"
        ranks = ",".join(str(r) for r in alert.get("ranks", [])) or "-"
        console.print(
            f"[{SEVERITY_STYLE.get(severity, 'green')}]{severity:<8}[/] {alert.get('rule', ''):<22} "
            f"{alert.get('team', '') or '-':<12} {alert.get('run_id', '')} step {alert.get('step')} "
            f"ranks {ranks}: {alert.get('message', '')}",
            soft_wrap=True,
        )


def _step_table(run_id: str, steps: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=f"{run_id}: aligned steps (newest last)", title_justify="left")
    for col in (
        "step",
        "ranks",
        "loss mean",
        "loss min..max",
        "grad_norm",
        "step_time max (rank)",
        "data_time max (rank)",
    ):
        table.add_column(col, justify="right")

    def fmt(metric: dict | None, scale: float = 1.0, unit: str = "") -> str:
        return f"{metric['max'] * scale:.1f}{unit} (r{metric['argmax']})" if metric else "-"

    for s in steps:
        m = s.get("metrics", {})
        loss = m.get("loss")
        nonfinite = s.get("nonfinite", {})
        table.add_row(
            str(s["step"]),
            f"{s['ranks_reported']}/{s['world_size']}"
            + ("" if s.get("complete") else f" missing {s['missing_ranks']}"),
            (f"{loss['mean']:.4f}" if loss else "-") + (f" ({nonfinite['loss']} NaN)" if "loss" in nonfinite else ""),
            f"{loss['min']:.4f}..{loss['max']:.4f}" if loss else "-",
            f"{m['grad_norm']['mean']:.3g}" if "grad_norm" in m else "-",
            fmt(m.get("step_time_s"), 1000, " ms"),
            fmt(m.get("data_time_s"), 1000, " ms"),
        )
    return table


def tail(
    run_id: Annotated[str, typer.Argument(help="The run to show")],
    rows: Annotated[int, typer.Option(help="Steps shown")] = 20,
    once: Annotated[bool, typer.Option("--once", help="Print what is there and exit instead of following")] = False,
    bootstrap: BootstrapOpt = None,
    prefix: PrefixOpt = None,
) -> None:
    """Live per-step view of one run from <prefix>.steps (Ctrl-C to stop)."""
    from rich.console import Console
    from rich.live import Live

    settings = load_settings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    console = Console()
    latest: deque[dict[str, Any]] = deque(maxlen=rows)
    by_step: dict[int, dict[str, Any]] = {}
    records = _records(settings, settings.topics.steps, follow=not once)
    if once:
        for step in records:
            if step.get("run_id") == run_id:
                by_step[step["step"]] = step
        shown = [by_step[k] for k in sorted(by_step)][-rows:]
        if not shown:
            fail(f"no aligned steps for run {run_id!r} on {settings.topics.steps}", 1)
        console.print(_step_table(run_id, shown))
        return
    with Live(_step_table(run_id, []), console=console, refresh_per_second=4) as live:
        for step in records:
            if step.get("run_id") != run_id:
                continue
            by_step[step["step"]] = step  # a re-emitted step replaces the earlier one
            for old in sorted(by_step)[: max(0, len(by_step) - rows)]:
                del by_step[old]  # bounded memory on long runs
            latest.clear()
            latest.extend(by_step[k] for k in sorted(by_step)[-rows:])
            live.update(_step_table(run_id, list(latest)))


def register(app: typer.Typer) -> None:
    app.command("alerts")(alerts)
    app.command("tail")(tail)
