"""Robot signatures: DingTalk in the URL, Feishu in the body, checked against the vendors' published recipes."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import parse_qs, quote_plus, urlsplit

from rankstream.sinks.notify.signing import dingtalk_sign, dingtalk_url, feishu_sign, verify_dingtalk

SECRET = "SEC0123456789abcdef"


def test_dingtalk_sign_follows_the_documented_recipe() -> None:
    # DingTalk: string_to_sign = timestamp + "\n" + secret, HMAC-SHA256 keyed by the secret, base64.
    ts = 1_700_000_000_123
    expected = base64.b64encode(hmac.new(SECRET.encode(), f"{ts}\n{SECRET}".encode(), hashlib.sha256).digest()).decode()
    assert dingtalk_sign(ts, SECRET) == expected
    assert dingtalk_sign(ts + 1, SECRET) != expected


def test_dingtalk_url_keeps_the_token_and_url_encodes_the_signature() -> None:
    ts = 1_700_000_000_123
    url = dingtalk_url("https://oapi.dingtalk.com/robot/send?access_token=abc", ts, SECRET)
    parts = urlsplit(url)
    assert parts.path == "/robot/send"
    assert f"sign={quote_plus(dingtalk_sign(ts, SECRET))}" in parts.query  # '+', '/', '=' escaped
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["access_token"] == "abc"
    assert query["timestamp"] == str(ts)
    assert verify_dingtalk(query, SECRET, now_ms=ts + 1000)
    assert not verify_dingtalk(query, "SECwrong", now_ms=ts + 1000)
    assert not verify_dingtalk(query, SECRET, now_ms=ts + 2 * 3_600_000)  # older than an hour
    # signing again replaces, never duplicates, the parameters
    again = dingtalk_url(url, ts + 5, SECRET)
    assert parse_qs(urlsplit(again).query)["timestamp"] == [str(ts + 5)]


def test_feishu_sign_is_keyed_by_timestamp_and_secret_over_an_empty_message() -> None:
    ts = 1_599_360_473
    key = f"{ts}\n{SECRET}".encode()
    assert feishu_sign(ts, SECRET) == base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    assert feishu_sign(ts, SECRET) != feishu_sign(ts + 1, SECRET)
