"""ClickHouse's HTTP semantics without an engine: credentials, headers, bodies, statuses, compressed responses."""

from __future__ import annotations

import base64
import struct

import lz4.block
import pytest
from clickhouse_cityhash.cityhash import CityHash128

from rankstream.sinks.store.auth import credentials
from rankstream.sinks.store.http_request import QueryError, Request, form_fields, http_status, native_compress


def _basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_credentials_in_clickhouse_order() -> None:
    assert credentials({}, {}) == ("default", "")
    assert credentials({"x-clickhouse-user": "a_ro", "x-clickhouse-key": "k"}, {"user": "u", "password": "p"}) == (
        "a_ro",
        "k",
    )
    assert credentials({}, {"user": "u", "password": "p"}) == ("u", "p")
    assert credentials({}, {"password": "p"}) == ("default", "p")
    assert credentials(_basic("b_ro", "s:e:cret"), {}) == ("b_ro", "s:e:cret")
    with pytest.raises(QueryError) as err:
        credentials({"authorization": "Basic !!!"}, {})
    assert err.value.code == 516


def test_headers_set_format_and_database() -> None:
    req = Request({}, b"SELECT 1", {"x-clickhouse-format": "JSONEachRow", "x-clickhouse-database": "rankstream"})
    assert req.output_format() == "JSONEachRow" and req.database == "rankstream"
    assert Request({"readonly": "1"}, b"SELECT 1").readonly and Request({"readonly": "2"}, b"SELECT 1").readonly
    assert not Request({"readonly": "0"}, b"SELECT 1").readonly


def test_a_form_content_type_body_is_the_query() -> None:
    """curl --data-binary sends application/x-www-form-urlencoded: never fields, as in ClickHouse."""
    req = Request({}, b"SELECT 1")
    assert req.sql == "SELECT 1"
    multipart = b'--XX\r\nContent-Disposition: form-data; name="param_x"\r\n\r\n5\r\n--XX--\r\n'
    assert form_fields("multipart/form-data; boundary=XX", multipart) == {"param_x": "5"}


def test_statuses() -> None:
    assert http_status(516) == 401
    assert http_status(164) == 403 and http_status(497) == 403
    assert http_status(62) == 400 and http_status(60) == 404


def test_native_compression_frames_check_out() -> None:
    data = b"rankstream" * 300_000  # > 1 MiB: two blocks
    out = native_compress(data)
    pos, got = 0, b""
    while pos < len(out):
        hi, lo = struct.unpack_from("<QQ", out, pos)
        method, size, raw_size = struct.unpack_from("<BII", out, pos + 16)
        block = out[pos + 16 : pos + 16 + size]
        assert method == 0x82 and CityHash128(block) == (hi << 64) | lo
        got += lz4.block.decompress(block[9:], uncompressed_size=raw_size)
        pos += 16 + size
    assert got == data
    assert native_compress(b"")  # an empty result is still one (empty) block
