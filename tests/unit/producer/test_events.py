"""Bad metric input is converted or dropped and counted; output always satisfies the contract."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import torch

from rankstream.producer.events import MAX_NAME_CHARS, EventEncoder, to_float
from rankstream.schema import MAX_EVENT_BYTES, MAX_TAG_CHARS, decode_event


def test_to_float_accepts_numbers_and_rejects_text() -> None:
    assert to_float(1) == 1.0 and to_float(True) == 1.0 and to_float(2.5) == 2.5
    assert to_float(np.float16(0.5)) == 0.5 and to_float(np.int64(7)) == 7.0
    assert to_float(torch.tensor(3.0, requires_grad=True)) == 3.0
    assert to_float(torch.tensor([4.0])) == 4.0
    assert to_float(Decimal("1.5")) == 1.5
    for bad in ("1.5", b"2", None, [1.0], {"a": 1}, torch.ones(3), 1 + 2j, 10**400):
        assert to_float(bad) is None


def test_encode_counts_drops_and_writes_nonfinite_as_strings() -> None:
    enc = EventEncoder("run", 1, 2, 1, host="h")
    raw = enc.encode(
        "step",
        5,
        123.0,
        7,
        {"loss": float("nan"), "gn": float("inf"), "neg": -math.inf, "txt": "x", "vec": torch.ones(2), 3: 1},
        {"stage": "warmup", "n": 4, "long": "y" * (MAX_TAG_CHARS + 10), "none": None},
    )
    ev = decode_event(raw)
    assert ev["seq"] == 7 and ev["step"] == 5 and ev["rank"] == 1 and ev["host"] == "h"
    assert math.isnan(ev["metrics"]["loss"]) and ev["metrics"]["gn"] == math.inf and ev["metrics"]["neg"] == -math.inf
    assert ev["metrics"]["3"] == 1.0
    assert "txt" not in ev["metrics"] and "vec" not in ev["metrics"]
    assert enc.dropped_invalid == 2
    assert ev["tags"]["n"] == "4" and len(ev["tags"]["long"]) == MAX_TAG_CHARS and "none" not in ev["tags"]
    assert b'"nan"' in raw and b"\n" not in raw


def test_long_names_are_truncated_and_huge_meta_shrinks_below_the_limit() -> None:
    enc = EventEncoder("run", 0, 1, 0)
    ev = decode_event(enc.encode("step", 0, 1.0, 0, {"m" * 500: 1.0}))
    assert list(ev["metrics"]) == ["m" * MAX_NAME_CHARS]
    meta = {"team": "t", "config": {f"k{i}": "v" * 1000 for i in range(1000)}}
    raw = enc.encode("run_start", -1, 1.0, 0, meta=meta)
    assert len(raw) <= MAX_EVENT_BYTES
    ev = decode_event(raw)
    assert ev["meta"]["team"] == "t" and ev["meta"]["config"]["_truncated"] is True
