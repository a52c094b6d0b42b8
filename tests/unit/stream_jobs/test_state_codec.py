"""The detector state's record format: plain JSON when small, zlib when large, bounded when inflating."""

from __future__ import annotations

import zlib

import pytest

from rankstream.schema import dumps
from rankstream.stream_jobs.state_codec import COMPRESS_ABOVE, CorruptState, decode_state, encode_state


def test_a_small_state_stays_plain_json() -> None:
    state = {"run_id": "r", "aligner": {"released": 12}}
    assert encode_state(state) == dumps(state)
    assert decode_state(encode_state(state)) == state


def test_a_large_state_is_compressed_and_round_trips() -> None:
    state = {"liveness": {"last_ts": [1.8e9 + i / 7 for i in range(20_000)]}}
    encoded = encode_state(state)
    assert len(dumps(state)) > COMPRESS_ABOVE and len(encoded) < len(dumps(state)) / 2
    assert decode_state(encoded) == state


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"z" + b"not zlib", "does not inflate"),
        (b"z" + zlib.compress(b"[1, 2]"), "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
    ],
)
def test_a_corrupt_record_is_refused_with_a_reason(value: bytes, why: str) -> None:
    with pytest.raises(CorruptState, match=why):
        decode_state(value)


def test_inflating_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rankstream.stream_jobs.state_codec.MAX_STATE_BYTES", 1000)
    with pytest.raises(CorruptState, match="beyond 1000 bytes"):
        decode_state(b"z" + zlib.compress(b" " * 5000))
