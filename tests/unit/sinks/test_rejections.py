"""Telling refused data from an unavailable store, and finding the refused messages by halving."""

from __future__ import annotations

import math

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError

from rankstream.sinks.rejections import Rejected, error_code, find_rejected, rejection_reason


def _inserter(refused: set[int]) -> tuple[list[tuple[int, int]], object]:
    calls: list[tuple[int, int]] = []
    stored: list[int] = []

    def insert(lo: int, hi: int) -> None:
        calls.append((lo, hi))
        bad = sorted(refused.intersection(range(lo, hi)))
        if bad:
            raise Rejected(f"row {bad[0]} violates c")
        stored.extend(range(lo, hi))

    insert.stored = stored  # type: ignore[attr-defined]
    return calls, insert


@pytest.mark.parametrize("refused", [set(), {0}, {99}, {0, 7, 8, 99}, set(range(100))])
def test_halving_finds_every_refused_item_and_stores_every_other_once(refused: set[int]) -> None:
    calls, insert = _inserter(refused)
    found = find_rejected(100, insert)  # type: ignore[arg-type]
    assert [i for i, _ in found] == sorted(refused)
    assert all(reason == f"row {i} violates c" for i, reason in found)
    stored = insert.stored  # type: ignore[attr-defined]
    assert sorted(stored) == [i for i in range(100) if i not in refused]  # once each
    if 0 < len(refused) <= 4:
        assert len(calls) <= 1 + 2 * len(refused) * math.ceil(math.log2(100))


def test_an_unavailable_store_during_halving_propagates() -> None:
    def insert(lo: int, hi: int) -> None:
        if hi - lo == 100:
            raise Rejected("row 3 violates c")
        raise OperationalError("connection refused")

    with pytest.raises(OperationalError):
        find_rejected(100, insert)


def test_data_errors_are_refusals_and_outages_are_not() -> None:
    server = DatabaseError(
        "HTTPDriver for http://127.0.0.1:8123 received ClickHouse error code 469\n"
        " Code: 469. DB::Exception: Constraint `c` for table rankstream.events is violated at row 1. "
        "Expression: (host != 'x'). (VIOLATED_CONSTRAINT) (version 25.8.1.1)"
    )
    reason = rejection_reason(server)
    assert reason is not None and reason.startswith("the store refused the rows: Constraint `c`")
    assert "\n" not in reason and "version" not in reason
    assert rejection_reason(DataError("Unable to create native array for column `n`: error")) is not None
    assert rejection_reason(ValueError("invalid literal for int() with base 10: 'abc'")) is not None
    assert rejection_reason(OperationalError("Error HTTPConnectionPool: Connection refused")) is None
    assert (
        rejection_reason(DatabaseError("Code: 241. DB::Exception: Memory limit exceeded. (MEMORY_LIMIT_EXCEEDED)"))
        is None
    )
    assert rejection_reason(DatabaseError("Code: 252. DB::Exception: Too many parts. (TOO_MANY_PARTS)")) is None
    assert rejection_reason(RuntimeError("chdb session closed")) is None


def test_the_client_error_code_attribute_decides_when_it_is_set() -> None:
    """clickhouse-connect sets ``Error.code``; the text is parsed only for errors without one (e.g. chDB's own)."""
    refused = DatabaseError("Constraint `c` for table rankstream.events is violated at row 1.", code=469)
    assert rejection_reason(refused) == (
        "the store refused the rows: Constraint `c` for table rankstream.events is violated at row 1."
    )
    # A code in the attribute wins over a different one in the text; an outage code is retried.
    assert rejection_reason(DatabaseError("Code: 469. DB::Exception: text of another error", code=241)) is None
    assert rejection_reason(DatabaseError("The ClickHouse server returned an error", code=53)) is not None
    assert error_code(DatabaseError("Code: 53. DB::Exception: Type mismatch")) == 53  # no attribute: the text
    assert error_code(RuntimeError("Code: 395. DB::Exception: from chdb")) == 395
    assert error_code(OperationalError("Network Error")) is None
