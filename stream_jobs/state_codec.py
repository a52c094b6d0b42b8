"""How a run's detector state is written to the compacted state topic: JSON, zlib-compressed when large.

Why: a run's state grows with its world size (per-rank liveness and the rank lists of
its alert cooldowns, ~45 bytes a rank): ~3 MB of JSON for 65,536 ranks, three times
Kafka's default message limit, so the state of the largest legal run could not be
saved and its partition stalled. zlib at level 1 shrinks it 5-20x in ~10 ms. Small
states (every run below a few thousand ranks) stay plain JSON, readable with kcat.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

from rankstream.schema import dumps, loads

#: States above this many bytes of JSON are compressed.
COMPRESS_ABOVE: Final = 64 * 1024
#: A compressed state starts with this byte (plain JSON starts with ``{``).
_COMPRESSED: Final = b"z"
#: Refuse to inflate a record beyond this (a corrupt or forged record must not exhaust memory).
MAX_STATE_BYTES: Final = 256 * 1024 * 1024


class CorruptState(ValueError):
    """A state record that is neither JSON nor a compressed JSON object within bounds."""


def encode_state(state: dict[str, Any]) -> bytes:
    raw = dumps(state)
    if len(raw) <= COMPRESS_ABOVE:
        return raw
    return _COMPRESSED + zlib.compress(raw, 1)


def decode_state(value: bytes) -> dict[str, Any]:
    """The state dict of a record written by :func:`encode_state` (or by a worker before compression existed)."""
    if value[:1] == _COMPRESSED:
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(value[1:], MAX_STATE_BYTES)
        except zlib.error as exc:
            raise CorruptState(f"compressed state does not inflate: {exc}") from None
        if inflater.unconsumed_tail:
            raise CorruptState(f"compressed state inflates beyond {MAX_STATE_BYTES} bytes")
        value = raw
    state = loads(value)
    if not isinstance(state, dict):
        raise CorruptState("state is not a JSON object")
    return state


__all__ = ["COMPRESS_ABOVE", "CorruptState", "decode_state", "encode_state"]
