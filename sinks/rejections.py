"""Tell a batch the store refuses for its data apart from a store that is down, and find the refused rows.

Validation keeps the known bad values out of the store (see ``records``), but a
row can still be refused for a reason nobody foresaw: a constraint a team added
to its table, a value the column encoder cannot write. Such a refusal repeats on
every retry, so retrying the batch forever (right for a store that is down) would
stall the sink for good. Instead the batch is split in halves until each refused
message is alone; those go to the dead-letter topic with the store's reason and
everything else is stored. Pure: the insert is a callable.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

from rankstream.errors import InvalidInput

#: ClickHouse error codes that depend only on the inserted values (ErrorCodes.cpp).
DATA_ERROR_CODES: frozenset[int] = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        131,  # TOO_LARGE_STRING_SIZE
        190,  # SIZES_OF_ARRAYS_DONT_MATCH
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        407,  # DECIMAL_OVERFLOW
        469,  # VIOLATED_CONSTRAINT
    }
)

#: How every refusal reason starts: ``rankstream dlq --redrive`` re-sends only these letters.
REFUSED_BY_SERVER = "the store refused the rows: "
REFUSED_BY_CLIENT = "the store client cannot encode the rows: "

_CODE = re.compile(r"Code: (\d+)\.")
_EXCEPTION_TEXT = re.compile(r"DB::Exception: (.*?)(?: \(version [^)]*\))?$")
_ENCODING_ERRORS = (ValueError, TypeError, OverflowError, struct.error)


class Rejected(InvalidInput):
    """The store refused the rows for what they contain; retrying the same rows cannot succeed.

    ``reason`` (one line, starting with :data:`REFUSED_BY_SERVER` or :data:`REFUSED_BY_CLIENT`)
    is what the dead letter records.
    """


def rejection_reason(exc: BaseException) -> str | None:
    """A one-line reason when ``exc`` is a refusal of the data itself, else ``None`` (store down: retry)."""
    from clickhouse_connect.driver.exceptions import DatabaseError, DataError

    if isinstance(exc, (DataError, *_ENCODING_ERRORS)):
        return REFUSED_BY_CLIENT + _first_line(exc)
    if isinstance(exc, DatabaseError) and error_code(exc) in DATA_ERROR_CODES:
        return REFUSED_BY_SERVER + _server_message(str(exc))
    return None


def error_code(exc: BaseException) -> int | None:
    """ClickHouse's error code of ``exc``: the client's ``code`` attribute, else the ``Code: N.`` of its text.

    clickhouse-connect sets ``Error.code`` on the errors it raises; the text is the
    fallback for errors that carry none (chDB's own exceptions, an error built by hand).
    """
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    match = _CODE.search(str(exc))
    return int(match.group(1)) if match else None


def is_refusal(reason: str) -> bool:
    """Whether a dead letter's reason is the store refusing the rows (not invalid input)."""
    return reason.startswith((REFUSED_BY_SERVER, REFUSED_BY_CLIENT))


def find_rejected(count: int, insert: Callable[[int, int], None]) -> list[tuple[int, str]]:
    """Insert items ``[0, count)`` around the refused ones; return ``(index, reason)`` of each refused item.

    ``insert(lo, hi)`` stores items ``lo..hi-1`` or raises :class:`Rejected`; any
    other exception propagates (the caller retries the batch). Items that are
    stored are stored once; ``k`` refused items cost about ``2 k log2(count)``
    inserts.
    """
    refused: list[tuple[int, str]] = []
    stack = [(0, count)]
    while stack:
        lo, hi = stack.pop()
        if lo >= hi:
            continue
        try:
            insert(lo, hi)
        except Rejected as exc:
            if hi - lo == 1:
                refused.append((lo, exc.reason))
                continue
            mid = (lo + hi) // 2
            stack.append((mid, hi))
            stack.append((lo, mid))
    return refused


def _server_message(text: str) -> str:
    """The server's exception text after ``Code: N.`` (when present), on one line, without the version suffix."""
    match = _CODE.search(text)
    line = " ".join(text[match.end() if match else 0 :].split())
    match = _EXCEPTION_TEXT.search(line)
    return (match.group(1) if match else line)[:300]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
