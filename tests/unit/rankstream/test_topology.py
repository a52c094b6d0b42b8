"""The run_start ``topology`` of contract v1 (additive): validated, kept on run_start only."""

from __future__ import annotations

import pytest

from rankstream.schema import InvalidEvent, decode_event, dumps
from rankstream.topology import validate_topology


def _event(kind: str, **extra: object) -> bytes:
    base = {"v": 1, "kind": kind, "run_id": "r", "rank": 1, "world_size": 4, "ts": 1.0, "seq": 0, "step": 0}
    return dumps({**base, **extra})


def test_run_start_keeps_a_normalized_topology_and_other_kinds_drop_it() -> None:
    topo = {"dp": [1, 2], "pp": [0, 2], "shard": [1, 2], "grads": "shard", "source": "user", "future": 1}
    start = decode_event(_event("run_start", topology=topo))
    assert start["topology"] == {"dp": [1, 2], "pp": [0, 2], "shard": [1, 2], "grads": "shard", "source": "user"}
    assert "topology" not in decode_event(_event("step", topology=topo))
    assert "topology" not in decode_event(_event("run_start"))  # old producers: the event is as before


@pytest.mark.parametrize(
    ("topology", "reason"),
    [
        ([1, 2], "'topology' must be an object"),
        ({"tp": [2, 2]}, "'tp' must be [rank, size]"),
        ({"pp": [0]}, "'pp' must be [rank, size]"),
        ({"dp": [0, True]}, "'dp' must be [rank, size]"),
        ({"shard": [0, 1 << 17]}, "'shard' must be [rank, size]"),
        ({"grads": "half"}, "'grads' must be one of"),
        ({"source": "x" * 65}, "'source' must be a string"),
    ],
)
def test_a_malformed_topology_is_rejected_with_a_reason(topology: object, reason: str) -> None:
    with pytest.raises(InvalidEvent) as err:
        decode_event(_event("run_start", topology=topology))
    assert reason in err.value.reason
    with pytest.raises(InvalidEvent):
        validate_topology(topology)
