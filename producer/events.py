"""Turn what the training loop handed over into contract-v1 wire bytes (background thread only).

The hot path only copies references; here values are converted (tensors and
numpy scalars read, ints widened), bad values dropped and counted, long names
and tags truncated, and non-finite floats written as the contract's strings.
Nothing here ever raises for bad user input: it counts and warns once.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any

from rankstream.producer.redact import redact_metric_names, redact_tags
from rankstream.schema import (
    MAX_EVENT_BYTES,
    MAX_METRICS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    META_FIELDS,
    SCHEMA_VERSION,
    dumps,
    encode_metric,
)

log = logging.getLogger("rankstream.producer")

MAX_NAME_CHARS = 128

_HOST = socket.gethostname()


def to_float(value: Any) -> float | None:
    """A metric value as float, or None when it is not a number.

    Accepts floats, ints, bools, numpy scalars, one-element tensors/arrays and
    anything else with ``__float__``; strings are never parsed. Reading a CUDA
    tensor here waits for the GPU work that produced it, on this thread only.
    """
    t = type(value)
    if t is float:
        return value
    if t is int or t is bool:
        try:
            return float(value)
        except OverflowError:
            return None
    if value is None or isinstance(value, str | bytes | bytearray):
        return None
    try:
        detach = getattr(value, "detach", None)
        out = float(detach() if callable(detach) else value)
    except Exception:
        return None
    return out if type(out) is float else None


class EventEncoder:
    """Builds wire events for one rank and keeps the bad-input counters."""

    def __init__(
        self, run_id: str, rank: int, world_size: int, local_rank: int, host: str | None = None, inc: str = ""
    ) -> None:
        self.base = {
            "v": SCHEMA_VERSION,
            "run_id": run_id,
            "inc": inc,
            "rank": rank,
            "world_size": world_size,
            "local_rank": local_rank,
            "host": host or _HOST,
        }
        self.dropped_invalid = 0
        self.truncated = 0
        self._warned: set[str] = set()
        #: This rank's parallel layout (rankstream.topology), sent with run_start when known.
        self.topology: dict[str, Any] | None = None

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("rankstream: %s (counted in reporter.stats; warned once)", message)

    def metrics(self, raw: Mapping[Any, Any] | None) -> dict[str, float | str]:
        out: dict[str, float | str] = {}
        if not raw:
            return out
        for name, value in raw.items():
            if len(out) >= MAX_METRICS:
                self.dropped_invalid += len(raw) - MAX_METRICS
                self._warn_once("too_many", f"more than {MAX_METRICS} metrics in one event: the rest are dropped")
                break
            key = name if type(name) is str else str(name)
            if len(key) > MAX_NAME_CHARS:
                key = key[:MAX_NAME_CHARS]
                self.truncated += 1
            number = to_float(value)
            if number is None:
                self.dropped_invalid += 1
                self._warn_once(
                    "non_numeric",
                    f"metric {key!r} has non-numeric value {value!r:.60} ({type(value).__name__}): dropped",
                )
                continue
            out[key] = encode_metric(number)
        return redact_metric_names(out)

    def tags(self, raw: Mapping[Any, Any] | None) -> dict[str, str]:
        out: dict[str, str] = {}
        if not raw:
            return out
        for name, value in raw.items():
            if len(out) >= MAX_TAGS:
                self.truncated += 1
                self._warn_once("too_many_tags", f"more than {MAX_TAGS} tags in one event: the rest are dropped")
                break
            if value is None:
                continue
            key = name if type(name) is str else str(name)
            text = value if type(value) is str else _text(value)
            if len(key) > MAX_NAME_CHARS:
                key = key[:MAX_NAME_CHARS]
                self.truncated += 1
            if len(text) > MAX_TAG_CHARS:
                text = text[:MAX_TAG_CHARS]
                self.truncated += 1
                self._warn_once("long_tag", f"tag {key!r} longer than {MAX_TAG_CHARS} characters: truncated")
            out[key] = text
        return redact_tags(out)

    def encode(
        self,
        kind: str,
        step: int,
        ts: float,
        seq: int,
        metrics: Mapping[Any, Any] | None = None,
        tags: Mapping[Any, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> bytes:
        """One wire message (compact JSON bytes, no newline inside)."""
        event = dict(self.base)
        event.update(kind=kind, step=step, ts=ts, seq=seq, metrics=self.metrics(metrics), tags=self.tags(tags))
        if meta:
            event["meta"] = dict(meta)
        if kind == "run_start" and self.topology:
            event["topology"] = self.topology
        try:
            payload = dumps(event)
        except (TypeError, ValueError) as exc:  # only meta can get here (it is pre-redacted JSON-able data)
            self._warn_once("meta", f"run metadata is not JSON-serializable ({exc}): sent without it")
            event.pop("meta", None)
            payload = dumps(event)
        if len(payload) > MAX_EVENT_BYTES and meta:
            payload = self._shrink_meta(event, len(payload))
        return payload

    def _shrink_meta(self, event: dict[str, Any], size: int) -> bytes:
        self.truncated += 1
        self._warn_once("meta_size", f"run metadata is {size} bytes (> {MAX_EVENT_BYTES}): config truncated")
        meta = dict(event["meta"])
        meta["config"] = {"_truncated": True, "_bytes": size}
        event["meta"] = meta
        payload = dumps(event)
        if len(payload) > MAX_EVENT_BYTES:
            event["meta"] = {k: _text(meta[k])[:1024] for k in META_FIELDS if k in meta and k != "config"}
            payload = dumps(event)
        return payload


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"
