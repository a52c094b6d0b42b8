"""``rankstream dlq``: what went to the dead-letter topic and why; re-sending what the store refused.

Only refusals are re-sent: they were valid events (the stream worker aligned them)
that the store would not take, e.g. for a constraint since dropped. They go back
to their source topic with :data:`~rankstream.topics.SINK_ONLY_HEADER`, so the
sink stores them and the worker skips them (for a run it has forgotten, an old
event would otherwise start a new, partial run). Invalid input is not re-sent:
it would be refused again; the fix belongs where it was produced.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Annotated, Any

import typer

from rankstream.cli.common import EXIT_SERVICE, BootstrapOpt, PrefixOpt, fail, load_settings
from rankstream.cli.live import documents
from rankstream.sinks.rejections import is_refusal
from rankstream.topics import SINK_ONLY_HEADER

PREVIEW_CHARS = 160


def dlq(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep waiting for new dead letters")] = False,
    reason: Annotated[
        str | None, typer.Option(help="Only dead letters whose reason contains this text (case-insensitive)")
    ] = None,
    output: Annotated[str, typer.Option("--format", help="text or json (one dead letter per line)")] = "text",
    redrive: Annotated[
        bool,
        typer.Option(
            "--redrive",
            help="Send the selected letters that the store refused back to their source topic (original bytes "
            "and key), for the sink alone, once the cause is fixed (e.g. the constraint dropped)",
        ),
    ] = False,
    bootstrap: BootstrapOpt = None,
    prefix: PrefixOpt = None,
) -> None:
    """Dead letters of <prefix>.dlq, oldest first: where each came from, the reason, the original message."""
    from rich.console import Console

    if output not in ("text", "json"):
        fail(f"--format must be text or json, got {output!r}", 2)
    if redrive and follow:
        fail("--redrive sends what is there now; it cannot be combined with --follow", 2)
    settings = load_settings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    console = Console(highlight=False, stderr=output == "json")
    wanted = reason.lower() if reason else None
    reasons: Counter[str] = Counter()
    selected: list[tuple[bytes | None, dict[str, Any]]] = []
    for record, letter in documents(settings, settings.topics.dlq, follow=follow):
        if not isinstance(letter, dict) or "reason" not in letter:
            continue  # not a dead letter as rankstream.schema.dlq_record writes it
        why = str(letter["reason"])
        if wanted and wanted not in why.lower():
            continue
        reasons[_reason_kind(why)] += 1
        if redrive and is_refusal(why) and not letter.get("original_truncated"):
            selected.append((record.key, letter))
        if output == "json":
            print(json.dumps(letter), flush=True)
        else:
            console.print(_line(letter), soft_wrap=True, markup=False)
    total = sum(reasons.values())
    if total:
        kinds = ", ".join(f"{n} x {kind}" for kind, n in reasons.most_common(5))
        console.print(f"{total} dead letter(s) on {settings.topics.dlq}: {kinds}", markup=False, soft_wrap=True)
    else:
        console.print(f"no dead letters on {settings.topics.dlq}" + (f" matching {reason!r}" if reason else ""))
    if redrive:
        sent = _redrive(settings, selected) if selected else 0
        console.print(
            f"re-sent {sent} message(s) the store had refused to their source topic(s), for the sink alone",
            markup=False,
            soft_wrap=True,
        )
        if total > len(selected):
            console.print(
                f"{total - len(selected)} letter(s) are invalid input, not refusals, or too large to keep whole, "
                "and were not re-sent: fix what produced them",
                markup=False,
                soft_wrap=True,
            )


def _reason_kind(reason: str) -> str:
    """The reason without its details, to count letters by cause ("the store refused the rows", ...)."""
    return reason.split(":", 1)[0][:60]


def _line(letter: dict[str, Any]) -> str:
    original = str(letter.get("original", ""))
    preview = original if len(original) <= PREVIEW_CHARS else original[:PREVIEW_CHARS] + f"... ({len(original)} chars)"
    if letter.get("original_truncated"):
        preview += f" (cut: the original had {letter.get('original_bytes', '?')} bytes)"
    where = f"{letter.get('source_topic', '?')}/{letter.get('partition', '?')}@{letter.get('offset', '?')}"
    return f"{where}  {letter.get('reason', '')}\n    original: {preview!r}"


def _redrive(settings: Any, letters: list[tuple[bytes | None, dict[str, Any]]]) -> int:
    """Produce each letter's original bytes to its source topic; returns how many Kafka acknowledged."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        producer = KafkaProducer(acks="all", linger_ms=5, **settings.kafka_python_kwargs())
        futures = []
        for key, letter in letters:
            topic = letter.get("source_topic")
            original = letter.get("original")
            if not topic or not isinstance(original, str):
                continue
            raw = original.encode(letter.get("original_encoding", "latin-1"))
            futures.append(producer.send(topic, key=key, value=raw, headers=[(SINK_ONLY_HEADER, b"1")]))
        producer.flush(timeout=60)
        for future in futures:
            future.get(timeout=60)
        producer.close()
    except KafkaError as exc:
        fail(f"re-sending dead letters to Kafka at {settings.bootstrap_servers} failed: {exc}", EXIT_SERVICE)
    return len(futures)


def register(app: typer.Typer) -> None:
    app.command("dlq")(dlq)
