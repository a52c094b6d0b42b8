"""The sink's pieces without Kafka or a store: the batch being filled, and the writer's refusals and halving."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from rankstream.schema import encode_event, loads
from rankstream.sinks.pending import PendingBatch
from rankstream.sinks.rejections import Rejected
from rankstream.sinks.store.tables import column_names
from rankstream.sinks.writer import BatchWriter


def _record(topic: str, offset: int, value: bytes | None, partition: int = 0) -> Any:
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, key=b"k", value=value)


def _event(seq: int, host: str = "h") -> bytes:
    return encode_event(
        {
            "v": 1, "kind": "step", "run_id": "r", "rank": 0, "world_size": 1, "host": host, "step": seq,
            "ts": 100.0 + seq, "seq": seq, "metrics": {"loss": 1.0}, "tags": {},
        }
    )  # fmt: skip


def test_pending_batch_decodes_items_dead_letters_the_invalid_and_spans_the_offsets() -> None:
    pending = PendingBatch()
    for offset, value in enumerate([_event(1), b"{not json", None, _event(2)]):
        pending.accept("p.events", _record("p.events", 10 + offset, value), "p.events", "p.steps")
    pending.accept("p.alerts", _record("p.alerts", 5, b"[]", partition=2), "p.events", "p.steps")
    assert [kind for kind, _ in pending.items] == ["event", "event"]
    assert pending.rows == 4  # one events row and one metrics row each
    assert len(pending.origins) == 2 and pending.origins[1].offset == 13
    reasons = [loads(letter.value)["reason"] for letter in pending.dlq]
    assert reasons[1] == "empty message" and len(reasons) == 3
    assert pending.offset_ranges() == {("p.events", 0): (10, 13), ("p.alerts", 2): (5, 5)}
    pending.refuse([(1, "the store refused the rows: no")])
    letter = loads(pending.dlq[-1].value)
    assert letter["reason"] == "the store refused the rows: no" and letter["offset"] == 13


class _Client:
    """Refuses (code 469) any insert whose events come from host 'bad'; ``down`` makes every insert fail."""

    def __init__(self) -> None:
        self.down = False
        self.inserted: list[str] = []

    def insert(self, table: str, columns: list[list[Any]], **_: Any) -> None:
        if self.down:
            raise OperationalError("Error HTTPConnectionPool: Connection refused")
        if table.endswith(".events"):
            hosts = columns[column_names("events").index("host")]
            if "bad" in hosts:
                raise DatabaseError("Constraint `c` is violated", code=469)
            self.inserted += hosts


def test_writer_tells_refused_rows_from_a_store_that_is_down_and_stores_around_them() -> None:
    from rankstream.schema import decode_event

    client = _Client()
    writer = BatchWriter(client)
    items = [("event", decode_event(_event(i, "bad" if i in (2, 5) else f"h{i}"))) for i in range(8)]
    with pytest.raises(Rejected, match="the store refused the rows: Constraint `c` is violated"):
        writer.insert(writer.build(items), "t")
    client.down = True
    with pytest.raises(OperationalError):
        writer.insert(writer.build(items[:1]), "t")
    client.down = False
    attempts: list[int] = []

    def retry(insert: Any) -> int:
        attempts.append(1)
        return insert()

    stored, refused = writer.insert_around_refused(items, "t", retry)
    assert [index for index, _ in refused] == [2, 5]
    assert sorted(client.inserted) == sorted(f"h{i}" for i in range(8) if i not in (2, 5))
    assert stored == 6 * 2 and len(attempts) > 2
