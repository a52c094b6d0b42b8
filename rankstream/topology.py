"""The optional ``topology`` of a ``run_start``: one rank's parallel coordinates (contract v1, additive).

Sharded and 3D-parallel jobs (FSDP, DeepSpeed ZeRO, tensor / pipeline / context / expert parallel)
make per-rank numbers mean different things on different ranks. A rank declares where it sits once,
in its ``run_start``; the stream job then knows which ranks own the loss, which ranks are peers, and
which gradient parts are distinct. Shared by the producer (builds it) and the stream job (reads it).
"""

from __future__ import annotations

from typing import Any, Final

from rankstream.schema import MAX_WORLD_SIZE, InvalidEvent

#: Parallel dimensions of a ``run_start``'s optional ``topology``: each ``[rank, size]`` in that group.
TOPOLOGY_DIMS: Final = ("dp", "tp", "pp", "cp", "ep")
#: What a rank's gradient metrics measure: its distinct part (shard), a full copy (replica), or the
#: model's norm already reduced by the framework (global, e.g. DeepSpeed's engine norm).
GRAD_HOLDINGS: Final = frozenset({"shard", "replica", "global"})
MAX_SOURCE_CHARS: Final = 64


def _coords(raw: Any, field: str) -> list[int]:
    if (
        type(raw) is not list
        or len(raw) != 2
        or not _is_int(raw[0])
        or not _is_int(raw[1])
        or not 0 <= raw[0] < raw[1] <= MAX_WORLD_SIZE
    ):
        raise InvalidEvent(f"topology {field!r} must be [rank, size] with 0 <= rank < size <= {MAX_WORLD_SIZE}")
    return [raw[0], raw[1]]


def validate_topology(raw: Any) -> dict[str, Any]:
    """A ``run_start``'s ``topology`` (this rank's parallel coordinates), normalized to its known keys.

    ``dp``/``tp``/``pp``/``cp``/``ep`` and ``shard`` are ``[rank, size]`` (absent: ``[0, 1]``);
    ``shard`` says which of ``size`` distinct gradient parts this rank holds (ranks with the same
    index hold replicas of one part); ``grads`` is one of :data:`GRAD_HOLDINGS`; ``source`` says
    where the numbers came from. Unknown keys are dropped (a later version may add some).
    """
    if not isinstance(raw, dict):
        raise InvalidEvent(f"field 'topology' must be an object, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for dim in (*TOPOLOGY_DIMS, "shard"):
        value = raw.get(dim)
        if value is not None:
            out[dim] = _coords(value, dim)
    grads = raw.get("grads")
    if grads is not None:
        if type(grads) is not str or grads not in GRAD_HOLDINGS:
            raise InvalidEvent(f"topology 'grads' must be one of {sorted(GRAD_HOLDINGS)}, got {grads!r:.40}")
        out["grads"] = grads
    source = raw.get("source")
    if source is not None:
        if type(source) is not str or len(source) > MAX_SOURCE_CHARS:
            raise InvalidEvent(f"topology 'source' must be a string of at most {MAX_SOURCE_CHARS} characters")
        out["source"] = source
    return out


def _is_int(value: Any) -> bool:
    return type(value) is int
