"""``rankstream replay`` and ``rankstream import``: run the detection core over a file, no broker needed.

Alerts go to stdout as JSON lines, a one-line summary to stderr; malformed lines
are reported with their line number (capped) and skipped; lines of a captured
stdout log that hold no log entry (progress bars, warnings) are only counted in
the summary. An empty file, or an imported file with no training or eval log
entry, exits 1 with one line. ``--input`` may be a directory of TensorBoard
event files.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import tzinfo
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from rankstream.cli.common import EXIT_CONFIG, EXIT_FAILURE, fail
from rankstream.errors import one_line

if TYPE_CHECKING:
    from rankstream.importers import ImportResult

#: Malformed lines reported one by one before the rest are only counted.
MAX_REPORTED_ERRORS = 20
_BATCH = 4096
#: How much of a file ``--format auto`` reads: a captured stdout log may open with a long preamble.
_HEAD_BYTES = 1 << 20

InputOpt = Annotated[
    Path,
    typer.Option(
        "--input",
        "-i",
        help="Events JSONL, ms-swift logging.jsonl, trainer_state.json, TensorBoard event file or run directory, "
        "or a captured training stdout log",
    ),
]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="auto, events (v1 JSONL), swift (ms-swift / Megatron-swift logging.jsonl), hf (trainer_state.json), "
        "tensorboard (events.out.tfevents.* or a directory of them), log (HF Trainer / Megatron-LM stdout)",
    ),
]
RunIdOpt = Annotated[str | None, typer.Option("--run-id", help="run_id for imported files [default: the file's stem]")]
TimezoneOpt = Annotated[
    str | None,
    typer.Option(
        "--timezone",
        help="IANA zone (e.g. UTC, Asia/Shanghai) of a stdout log's zone-less time stamps (Megatron-LM's) "
        "[default: this machine's local zone]",
    ),
]


def _zone(name: str | None) -> tzinfo | None:
    """The zone ``--timezone`` names; an unknown name exits 2 with one line."""
    if name is None:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        fail(f"unknown --timezone {name!r} (an IANA zone name such as UTC or Europe/Paris)", EXIT_CONFIG)


class ErrorReport:
    """Prints the first malformed lines to stderr, counts the rest."""

    def __init__(self, stream: IO[str], cap: int = MAX_REPORTED_ERRORS) -> None:
        self.stream = stream
        self.cap = cap
        self.count = 0

    def __call__(self, message: str) -> None:
        self.count += 1
        if self.count <= self.cap:
            print(f"rankstream: skipped {message}", file=self.stream)

    def close(self) -> None:
        if self.count > self.cap:
            print(f"rankstream: ... and {self.count - self.cap} more malformed lines", file=self.stream)


def replay_lines(
    lines: Iterable[bytes],
    engine: Any,
    on_output: Callable[[list[dict], list[dict]], None],
    on_error: Callable[[str], None],
) -> int:
    """Decode, validate and feed wire-event lines to ``engine`` in batches; returns events accepted."""
    from rankstream.schema import MAX_EVENT_BYTES, InvalidEvent, loads, validate_event

    accepted = 0
    batch: list[dict] = []
    append = batch.append
    for lineno, line in enumerate(lines, 1):
        try:
            if len(line) > MAX_EVENT_BYTES:
                raise InvalidEvent(f"message too large ({len(line)} bytes > {MAX_EVENT_BYTES})")
            try:
                obj = loads(line)
            except (ValueError, TypeError) as exc:
                if not line.strip():
                    continue
                raise InvalidEvent(f"not valid JSON: {str(exc).splitlines()[0][:120]}") from None
            append(validate_event(obj))
        except InvalidEvent as exc:
            on_error(f"line {lineno}: {exc.reason}")
            continue
        if len(batch) >= _BATCH:
            accepted += len(batch)
            out = engine.process_many(batch)
            batch.clear()
            if out.steps or out.alerts or out.resolved:
                on_output(out.steps, out.all_alerts())
    if batch:
        accepted += len(batch)
        out = engine.process_many(batch)
        on_output(out.steps, out.all_alerts())
    return accepted


def _import(path: Path, fmt: str, rid: str, tz: tzinfo | None = None) -> ImportResult:
    from rankstream.importers import (
        import_hf_trainer_state,
        import_swift_jsonl,
        import_tensorboard,
        import_training_log,
    )

    if fmt == "tensorboard":  # wall times of their own
        return import_tensorboard(path, run_id=rid, run_name=rid)
    end_ts = path.stat().st_mtime  # written last when the run ended (or died): imported times end there
    if fmt == "hf":
        return import_hf_trainer_state(path.read_bytes(), run_id=rid, end_ts=end_ts, run_name=rid)
    with path.open("rb") as fh:
        if fmt == "log":
            return import_training_log(fh, run_id=rid, end_ts=end_ts, run_name=rid, tz=tz)
        return import_swift_jsonl(fh, run_id=rid, end_ts=end_ts, run_name=rid)


def _default_run_id(path: Path, fmt: str) -> str:
    """The file's stem; for TensorBoard the run directory's name (an event file's name is a time and a host)."""
    if fmt == "tensorboard" and path.is_file():
        return path.parent.resolve().name or path.stem
    return path.name if path.is_dir() else path.stem


def _imported_lines(
    path: Path, fmt: str, run_id: str | None, on_error: Callable[[str], None], tz: tzinfo | None = None
) -> tuple[list[bytes], int, str]:
    """The file as v1 event lines, and how many of its lines held no log entry; a file with nothing to
    import exits 1 with one line."""
    from rankstream.importers import NothingToImport, TensorBoardMissing, require_logged
    from rankstream.schema import dumps

    try:
        result = _import(path, fmt, run_id or _default_run_id(path, fmt), tz)
        require_logged(result, f"{path} ({fmt} file)")
    except (NothingToImport, TensorBoardMissing) as exc:
        fail(one_line(exc), exc.exit_code)
    for err in result.errors:
        on_error(err)
    return [dumps(ev) for ev in result.events], result.ignored, result.ignored_what


def _resolve_format(path: Path, fmt: str) -> str:
    """The format to read ``path`` as; an empty file exits 1 with one line whatever the format."""
    from rankstream.importers import FORMATS, is_blank, sniff_path

    if fmt != "auto" and fmt not in FORMATS:
        fail(f"unknown --format {fmt!r} (expected auto, {', '.join(FORMATS)})", EXIT_CONFIG)
    if path.is_dir():
        if fmt not in ("auto", "tensorboard"):
            fail(f"input is a directory: {path} (only --format tensorboard reads one)", EXIT_CONFIG)
        try:
            return sniff_path(path, "")
        except ValueError as exc:
            fail(str(exc), EXIT_CONFIG)
    with path.open("rb") as fh:
        head = fh.read(_HEAD_BYTES).decode("utf-8", "replace")
    if is_blank(head) and _is_blank_file(path):
        fail(f"{path} is empty: nothing to replay or import", EXIT_FAILURE)
    return sniff_path(path, head) if fmt == "auto" else fmt


def _is_blank_file(path: Path) -> bool:
    with path.open("rb") as fh:
        return all(not chunk.replace(b"\xef\xbb\xbf", b"").strip() for chunk in iter(lambda: fh.read(1 << 20), b""))


def _check_input(path: Path) -> None:
    if not path.exists():
        fail(f"input file not found: {path}", EXIT_CONFIG)
    if not path.is_file() and not path.is_dir():
        fail(f"input is not a file: {path}", EXIT_CONFIG)


def summary_line(stats: dict[str, int], alerts: Counter[str], malformed: int, ignored: int = 0, what: str = "") -> str:
    by_rule = ", ".join(f"{rule}={n}" for rule, n in sorted(alerts.items())) or "none"
    return (
        f"replay: {stats['events']} events ({stats['duplicates']} duplicates, {stats['late_events']} late), "
        f"{stats['steps']} steps ({stats['partial_steps']} partial), {sum(alerts.values())} alerts ({by_rule}), "
        f"{malformed} malformed lines skipped" + ignored_note(ignored, what)
    )


def ignored_note(ignored: int, what: str) -> str:
    """The summary's count of input that held no log entry (a stdout log's progress bars and warnings)."""
    return f", {ignored} {what or 'lines without a log entry'} ignored" if ignored else ""


def replay(
    input: InputOpt,
    rules: Annotated[Path | None, typer.Option("--rules", help="Rules YAML (defaults + overrides)")] = None,
    steps_out: Annotated[
        Path | None, typer.Option("--steps-out", help="Write aligned steps as JSON lines here")
    ] = None,
    format: FormatOpt = "auto",
    run_id: RunIdOpt = None,
    timezone: TimezoneOpt = None,
) -> None:
    """Run alignment and detection over a past run; alerts as JSON lines on stdout."""
    from rankstream.schema import dumps
    from rankstream.stream_jobs.core import Engine, RulesError, load_rules

    _check_input(input)
    try:
        config = load_rules(rules)
    except RulesError as exc:
        fail(str(exc), EXIT_CONFIG)
    fmt = _resolve_format(input, format)
    tz = _zone(timezone)
    errors = ErrorReport(sys.stderr)
    engine = Engine(config)
    ignored, what = 0, ""
    counts: Counter[str] = Counter()
    stdout = sys.stdout.buffer
    steps_fh = None
    if steps_out is not None:
        try:
            steps_fh = steps_out.open("wb")
        except OSError as exc:
            fail(f"cannot write --steps-out {steps_out}: {exc.strerror or exc}", EXIT_CONFIG)

    def emit(steps: list[dict], alerts: list[dict]) -> None:
        for alert in alerts:
            if alert.get("state") != "resolved":  # the summary counts alerts fired
                counts[alert["rule"]] += 1
            stdout.write(dumps(alert) + b"\n")
        if steps_fh is not None and steps:
            steps_fh.write(b"".join(dumps(s) + b"\n" for s in steps))

    try:
        if fmt == "events":
            with input.open("rb") as fh:
                replay_lines(fh, engine, emit, errors)
        else:
            lines, ignored, what = _imported_lines(input, fmt, run_id, errors, tz)
            replay_lines(lines, engine, emit, errors)
        out = engine.finish()
        emit(out.steps, out.all_alerts())
    finally:
        if steps_fh is not None:
            steps_fh.close()
        stdout.flush()
    errors.close()
    print(summary_line(engine.stats, counts, errors.count, ignored, what), file=sys.stderr)


def import_cmd(
    input: InputOpt,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Events JSONL to write [default: stdout]")
    ] = None,
    format: FormatOpt = "auto",
    run_id: RunIdOpt = None,
    timezone: TimezoneOpt = None,
) -> None:
    """Convert a trainer's log (ms-swift logging.jsonl, HF trainer_state.json, TensorBoard event files, captured
    stdout) into v1 events (JSON lines)."""
    _check_input(input)
    fmt = _resolve_format(input, format)
    if fmt == "events":
        fail(f"{input} already holds rankstream events (use --format swift, hf or log to force)", EXIT_CONFIG)
    tz = _zone(timezone)
    errors = ErrorReport(sys.stderr)
    lines, ignored, what = _imported_lines(input, fmt, run_id, errors, tz)
    data = b"".join(line + b"\n" for line in lines)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        try:
            output.write_bytes(data)
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror or exc}", EXIT_CONFIG)
    errors.close()
    print(
        f"import: {len(lines)} events from {fmt} file, {errors.count} entries skipped" + ignored_note(ignored, what),
        file=sys.stderr,
    )


def register(app: typer.Typer) -> None:
    app.command("replay")(replay)
    app.command("import")(import_cmd)
