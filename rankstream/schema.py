"""Wire contract v1: names, validation and JSON codec shared by every component.

Events travel as JSON objects (see ../shared/DESIGN.md). In memory, a validated
event is a plain ``dict`` with the same keys, where metric values are floats
(the contract's ``"nan"``/``"inf"``/``"-inf"`` strings decoded to floats). Plain
dicts keep the hot paths (replay, stream jobs, sinks) cheap; this module is the
one place that decides what a valid event is, so every entry point rejects the
same inputs with the same one-line reason.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Final, TypeGuard

from rankstream.errors import InvalidInput

try:  # orjson is optional: the producer's install does not need it.
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only without the extra
    _orjson = None  # type: ignore[assignment]

SCHEMA_VERSION: Final = 1

EVENT_KINDS: Final = frozenset({"run_start", "step", "eval", "heartbeat", "run_end"})
SEVERITIES: Final = ("info", "warning", "critical")

STANDARD_METRICS: Final = (
    "loss",
    "lr",
    "grad_norm",
    "grad_norm_adapter",
    "grad_norm_backbone",
    "step_time_s",
    "data_time_s",
    "compute_time_s",
    "tokens_per_s",
    "samples_per_s",
    "mem_alloc_mb",
    "mem_reserved_mb",
    "mem_peak_mb",
    "mem_total_mb",
    "loss_scale",
    "grad_sq",
    "grad_sq_adapter",
    "grad_sq_backbone",
)

RULES: Final = (
    "nonfinite_loss",
    "nonfinite_grad",
    "loss_spike",
    "loss_rising",
    "loss_plateau",
    "grad_explosion",
    "grad_vanishing",
    "adapter_grad_vanishing",
    "straggler",
    "rank_lagging",
    "rank_silent",
    "rank_hung",
    "memory_pressure",
    "run_lost",
    "membership_changed",
    "clock_skew",
    "eval_loss_rising",
)

META_FIELDS: Final = (
    "run_name",
    "team",
    "project",
    "task_type",
    "model_name",
    "model_architecture",
    "config",
)

#: Messages larger than this are rejected before parsing (dead-letter, reason "too large").
MAX_EVENT_BYTES: Final = 256 * 1024
MAX_ID_CHARS: Final = 256
#: Incarnation ids are short random strings set by the producer (e.g. 12 hex digits).
MAX_INC_CHARS: Final = 64
MAX_METRICS: Final = 512
MAX_TAGS: Final = 128
MAX_TAG_CHARS: Final = 1024
#: The largest world size the pipeline carries. Set by what one Kafka message holds
#: (default max.message.bytes ~1 MB): an aligned step lists its missing ranks (~6 bytes
#: each: 380 KB at 65,536 ranks, one rank reporting) and a run's detector state keeps
#: per-rank liveness (~3 MB of JSON at 65,536 ranks, ~0.15-0.5 MB compressed). 2^20
#: made a 7.3 MB step and a 48 MB state that no topic accepted (docs/stream.md, "Bounds").
MAX_WORLD_SIZE: Final = 1 << 16
#: A dead letter carries at most this many bytes of JSON; a longer original is cut (``original_truncated``).
MAX_DLQ_BYTES: Final = 512 * 1024
#: step and seq are stored as 64-bit integers.
MAX_INT64: Final = (1 << 63) - 1

_NONFINITE_DECODE: Final = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class InvalidEvent(InvalidInput):
    """An input that breaks the wire contract; ``reason`` is one human line."""


# --------------------------------------------------------------------------- codec


def dumps(obj: Any) -> bytes:
    """Serialize to compact UTF-8 JSON; non-finite floats must already be strings."""
    if _orjson is not None:
        return _orjson.dumps(obj)
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def loads(raw: bytes | str) -> Any:
    """Parse JSON with the fastest parser installed."""
    if _orjson is not None:
        return _orjson.loads(raw)
    return json.loads(raw)


def encode_metric(value: float) -> float | str:
    """A float as the contract writes it: finite floats as numbers, others as strings."""
    if value != value:
        return "nan"
    if value == math.inf:
        return "inf"
    if value == -math.inf:
        return "-inf"
    return value


def encode_metrics(metrics: Mapping[str, float]) -> dict[str, float | str]:
    return {name: encode_metric(value) for name, value in metrics.items()}


# ----------------------------------------------------------------------- validation


def _is_int(value: Any) -> TypeGuard[int]:
    return type(value) is int  # bool is a subclass of int and is not allowed


def _is_number(value: Any) -> bool:
    t = type(value)
    return t is float or t is int


def require_int(
    obj: Mapping[str, Any],
    key: str,
    minimum: int = -MAX_INT64,
    maximum: int = MAX_INT64,
    error: type[InvalidEvent] = InvalidEvent,
) -> int:
    """``obj[key]`` as an integer in [minimum, maximum] (the 64-bit range the store holds by
    default), else ``error`` with a one-line reason. Shared by the event and the sink validators."""
    value = obj.get(key)
    if not _is_int(value):
        if value is None:
            raise error(f"missing field {key!r}")
        raise error(f"field {key!r} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise error(f"field {key!r} must be >= {minimum}, got {str(value)[:40]}")
    if value > maximum:
        raise error(f"field {key!r} must be <= {maximum}, got {str(value)[:40]}")
    return value


def _decode_metrics(raw: Any) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidEvent(f"field 'metrics' must be an object, got {type(raw).__name__}")
    if len(raw) > MAX_METRICS:
        raise InvalidEvent(f"too many metrics ({len(raw)} > {MAX_METRICS})")
    out: dict[str, float] = {}
    for name, value in raw.items():
        t = type(value)
        if t is float:
            out[name] = value
        elif t is int:
            out[name] = float(value)
        elif t is str and value in _NONFINITE_DECODE:
            out[name] = _NONFINITE_DECODE[value]
        else:
            raise InvalidEvent(f"metric {name!r} must be a number or 'nan'/'inf'/'-inf', got {value!r:.40}")
    return out


def _check_str_map(raw: Any, field: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidEvent(f"field {field!r} must be an object, got {type(raw).__name__}")
    if len(raw) > MAX_TAGS:
        raise InvalidEvent(f"too many {field} ({len(raw)} > {MAX_TAGS})")
    for key, value in raw.items():
        if type(value) is not str:
            raise InvalidEvent(f"{field[:-1]} {key!r} must be a string, got {type(value).__name__}")
        if len(value) > MAX_TAG_CHARS:
            raise InvalidEvent(f"{field[:-1]} {key!r} is longer than {MAX_TAG_CHARS} characters")
    return raw


def validate_event(obj: Any) -> dict[str, Any]:
    """Check a parsed JSON value against contract v1 and return the in-memory event.

    The returned dict always has ``metrics`` (floats), ``tags`` and ``meta``
    (possibly empty), ``step`` (``-1`` for ``run_start``/``run_end`` without one),
    ``host`` and ``local_rank``; a ``run_start`` with a ``topology`` keeps it (validated, see
    :func:`rankstream.topology.validate_topology`; other kinds drop it). Raises :class:`InvalidEvent`
    with a one-line reason.
    The ``metrics``/``tags``/``meta`` dicts may be shared with ``obj`` (never modified).

    This is the hottest function of replay and the stream jobs: the common case
    (exact types, all-float metrics) is checked inline, anything unusual goes
    through the detailed checks that produce the one-line reasons.
    """
    if type(obj) is not dict and not isinstance(obj, dict):
        raise InvalidEvent(f"event must be a JSON object, got {type(obj).__name__}")
    get = obj.get
    version = get("v")
    if version != SCHEMA_VERSION or type(version) is not int:
        raise InvalidEvent(f"unsupported schema version {version!r} (expected {SCHEMA_VERSION})")
    kind = get("kind")
    if type(kind) is not str or kind not in EVENT_KINDS:
        raise InvalidEvent(f"unknown kind {kind!r:.60}")
    run_id = get("run_id")
    if type(run_id) is not str or not run_id:
        raise InvalidEvent("missing or empty field 'run_id'")
    if len(run_id) > MAX_ID_CHARS:
        raise InvalidEvent(f"run_id longer than {MAX_ID_CHARS} characters")
    world_size = get("world_size")
    if type(world_size) is not int or world_size < 1 or world_size > MAX_WORLD_SIZE:
        world_size = require_int(obj, "world_size", 1, MAX_WORLD_SIZE)
    rank = get("rank")
    if type(rank) is not int or rank < 0:
        rank = require_int(obj, "rank", 0)
    if rank >= world_size:
        raise InvalidEvent(f"rank {rank} out of range for world_size {world_size}")
    seq = get("seq")
    if type(seq) is not int or seq < 0 or seq > MAX_INT64:
        seq = require_int(obj, "seq", 0)
    ts: Any = get("ts")
    t = type(ts)
    if t is float:
        if ts - ts != 0.0:
            raise InvalidEvent(f"field 'ts' must be a finite number, got {ts!r:.40}")
    elif t is int:
        ts = float(ts)
    else:
        raise InvalidEvent(f"field 'ts' must be a finite number, got {ts!r:.40}")
    step = get("step", -1)
    if kind == "step" or kind == "heartbeat" or kind == "eval":
        if type(step) is not int or step < 0 or step > MAX_INT64:
            step = require_int(obj, "step", 0)
    elif type(step) is not int:
        raise InvalidEvent(f"field 'step' must be an integer, got {type(step).__name__}")
    elif step < -MAX_INT64 or step > MAX_INT64:
        raise InvalidEvent("field 'step' is out of the 64-bit range")
    local_rank = get("local_rank", rank)
    if type(local_rank) is not int or local_rank < 0 or local_rank >= MAX_WORLD_SIZE:
        raise InvalidEvent(f"field 'local_rank' must be an integer in [0, {MAX_WORLD_SIZE})")
    host = get("host", "")
    if type(host) is not str:
        raise InvalidEvent("field 'host' must be a string")
    inc = get("inc", "")
    if type(inc) is not str or len(inc) > MAX_INC_CHARS:
        raise InvalidEvent(f"field 'inc' must be a string of at most {MAX_INC_CHARS} characters")
    meta = get("meta")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise InvalidEvent(f"field 'meta' must be an object, got {type(meta).__name__}")
    metrics = get("metrics")
    if metrics is None:
        metrics = {}
    elif type(metrics) is dict and len(metrics) <= MAX_METRICS:
        for value in metrics.values():
            if type(value) is not float:
                metrics = _decode_metrics(metrics)
                break
    else:
        metrics = _decode_metrics(metrics)
    tags = get("tags")
    if tags is None:
        tags = {}
    elif type(tags) is dict and len(tags) <= MAX_TAGS:
        for value in tags.values():
            if type(value) is not str or len(value) > MAX_TAG_CHARS:
                tags = _check_str_map(tags, "tags")
                break
    else:
        tags = _check_str_map(tags, "tags")
    event = {
        "v": SCHEMA_VERSION,
        "kind": kind,
        "run_id": run_id,
        "rank": rank,
        "world_size": world_size,
        "local_rank": local_rank,
        "host": host,
        "inc": inc,
        "step": step,
        "ts": ts,
        "seq": seq,
        "metrics": metrics,
        "tags": tags,
        "meta": meta,
    }
    if kind == "run_start":
        topology = get("topology")
        if topology is not None:
            from rankstream.topology import validate_topology  # rare (run_start): not on the hot path

            event["topology"] = validate_topology(topology)
    return event


def decode_event(raw: bytes | str) -> dict[str, Any]:
    """Parse and validate one wire message; every failure is an :class:`InvalidEvent`."""
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"message too large ({len(raw)} bytes > {MAX_EVENT_BYTES})")
    try:
        obj = loads(raw)
    except (ValueError, TypeError) as exc:
        raise InvalidEvent(f"not valid JSON: {str(exc).splitlines()[0][:120]}") from None
    return validate_event(obj)


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The wire form of an in-memory event (non-finite metrics as strings)."""
    wire = dict(event)
    wire["metrics"] = encode_metrics(event.get("metrics") or {})
    return dumps(wire)


# ------------------------------------------------------------------- derived records


def alert_id(run_id: str, rule: str, step: int, ranks: tuple[int, ...] | list[int] = ()) -> str:
    """Deterministic alert id: the same run, rule, trigger step (and ranks) give the same id.

    Ranks are part of the key so that two different straggler ranks flagged at
    the same step stay two alerts.
    """
    key = f"{run_id}\x1f{rule}\x1f{step}\x1f{','.join(str(r) for r in sorted(ranks))}"
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def step_key(run_id: str, step: int) -> str:
    """Deterministic key of an aligned step, used for downstream deduplication."""
    return f"{run_id}:{step}"


def dlq_record(
    raw: bytes, reason: str, source_topic: str, partition: int, offset: int, *, keep: int | None = None
) -> bytes:
    """Dead-letter message: the original bytes (as latin-1 text, lossless) plus the reason.

    Bounded by :data:`MAX_DLQ_BYTES`: a message up to the topic's limit can grow 6x as
    JSON text (control bytes become ``\\u00XX``), and a dead letter the DLQ topic refuses
    would stall the partition it came from. A cut original keeps its head and says so
    (``original_truncated``, ``original_bytes``: additive fields); it cannot be re-driven.
    ``keep`` cuts the original to that many bytes in any case (an output too large to publish).
    """
    letter: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "reason": reason,
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "original": raw.decode("latin-1"),
        "original_encoding": "latin-1",
    }
    if keep is not None and keep < len(raw):
        letter["original"] = raw[:keep].decode("latin-1")
        letter["original_truncated"] = True
        letter["original_bytes"] = len(raw)
    else:
        keep = len(raw)
    encoded = dumps(letter)
    while len(encoded) > MAX_DLQ_BYTES and keep > 0:
        keep = min(keep - 1, int(keep * MAX_DLQ_BYTES / len(encoded) * 0.9))
        letter["original"] = raw[: max(keep, 0)].decode("latin-1")
        letter["original_truncated"] = True
        letter["original_bytes"] = len(raw)
        encoded = dumps(letter)
    return encoded
