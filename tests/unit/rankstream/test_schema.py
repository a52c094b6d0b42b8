from __future__ import annotations

import math

import pytest

from rankstream.schema import (
    MAX_DLQ_BYTES,
    MAX_EVENT_BYTES,
    MAX_WORLD_SIZE,
    InvalidEvent,
    alert_id,
    decode_event,
    dlq_record,
    dumps,
    encode_event,
    loads,
    validate_event,
)


def _event(**over: object) -> dict:
    base = {
        "v": 1,
        "kind": "step",
        "run_id": "r1",
        "rank": 1,
        "world_size": 4,
        "local_rank": 1,
        "host": "h",
        "step": 10,
        "ts": 1.7e9,
        "seq": 3,
        "metrics": {"loss": 2.5, "grad_norm": "nan", "lr": 1, "x": "-inf"},
        "tags": {"stage": "warmup"},
    }
    base.update(over)
    return base


def test_round_trip_keeps_nonfinite_as_contract_strings() -> None:
    event = decode_event(encode_event(validate_event(_event())))
    assert event["metrics"]["loss"] == 2.5 and event["metrics"]["lr"] == 1.0
    assert math.isnan(event["metrics"]["grad_norm"]) and event["metrics"]["x"] == -math.inf
    wire = loads(encode_event(event))
    assert wire["metrics"]["grad_norm"] == "nan" and wire["metrics"]["x"] == "-inf"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"[1,2]", "must be a JSON object"),
        (b'{"v":2}', "unsupported schema version"),
        (b'{"v":true}', "unsupported schema version"),
    ],
)
def test_undecodable(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        decode_event(raw)


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"kind": "bogus"}, "unknown kind"),
        ({"run_id": ""}, "run_id"),
        ({"rank": 4}, "out of range"),
        ({"rank": -1}, "'rank' must be >= 0"),
        ({"rank": "1"}, "'rank' must be an integer"),
        ({"world_size": True}, "'world_size' must be an integer"),
        ({"seq": None}, "missing field 'seq'"),
        ({"ts": "now"}, "'ts' must be a finite number"),
        ({"step": 1.5}, "'step' must be an integer"),
        ({"metrics": {"loss": "high"}}, "metric 'loss'"),
        ({"metrics": [1]}, "'metrics' must be an object"),
        ({"tags": {"a": 1}}, "tag 'a' must be a string"),
        # out of what the store's columns hold, or what the aligner should allocate for
        ({"world_size": 2**31, "rank": 0}, "'world_size' must be <= 65536"),
        ({"step": 2**63}, "'step' must be <= "),
        ({"seq": 2**64}, "'seq' must be <= "),
        ({"kind": "run_start", "step": -(2**70)}, "'step' is out of the 64-bit range"),
        ({"local_rank": 2**40}, "'local_rank' must be an integer in"),
    ],
)
def test_invalid_fields_give_one_line_reasons(over: dict, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason) as info:
        validate_event(_event(**over))
    assert "\n" not in info.value.reason


def test_huge_payload_rejected_before_parsing() -> None:
    with pytest.raises(InvalidEvent, match="too large"):
        decode_event(b"{" + b" " * MAX_EVENT_BYTES + b"}")


def test_alert_id_is_deterministic_and_rank_sensitive() -> None:
    assert alert_id("r", "straggler", 5, [2, 1]) == alert_id("r", "straggler", 5, (1, 2))
    assert alert_id("r", "straggler", 5, [1]) != alert_id("r", "straggler", 5, [2])
    assert alert_id("r", "loss_spike", 5) != alert_id("r", "loss_spike", 6)


def test_dlq_record_keeps_original_bytes() -> None:
    raw = b"\xff\x00bad"
    record = loads(dlq_record(raw, "not valid JSON", "p.events", 2, 17))
    assert record["original"].encode("latin-1") == raw
    assert record["reason"] == "not valid JSON" and record["offset"] == 17


@pytest.mark.parametrize("byte", [b"\x00", b"\xff", b"a"])
def test_a_dead_letter_stays_under_its_bound_whatever_the_original(byte: bytes) -> None:
    raw = byte * (1 << 20)  # a message at Kafka's default limit; NUL bytes grow 6x as JSON text
    encoded = dlq_record(raw, "message too large", "p.events", 0, 3)
    record = loads(encoded)
    assert len(encoded) <= MAX_DLQ_BYTES
    assert record["original_truncated"] is True and record["original_bytes"] == len(raw)
    assert raw.startswith(record["original"].encode("latin-1")) and len(record["original"]) > 50_000


def test_an_event_beyond_the_largest_world_size_is_refused() -> None:
    event = {
        "v": 1,
        "kind": "step",
        "run_id": "r",
        "rank": 0,
        "world_size": MAX_WORLD_SIZE + 1,
        "step": 1,
        "ts": 1.0,
        "seq": 0,
        "metrics": {"loss": 1.0},
    }
    with pytest.raises(InvalidEvent, match=f"'world_size' must be <= {MAX_WORLD_SIZE}"):
        decode_event(dumps(event))
