"""Webhook signatures of the chat robots (pure functions: the timestamp is an argument).

* DingTalk ("加签"): HMAC-SHA256 keyed by the secret over ``"<timestamp ms>\\n<secret>"``,
  base64, URL-encoded, sent as the query parameters ``timestamp`` and ``sign``.
* Feishu/Lark: HMAC-SHA256 keyed by ``"<timestamp s>\\n<secret>"`` over an empty message,
  base64, sent in the JSON body as ``timestamp`` and ``sign``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit, urlunsplit


def dingtalk_sign(timestamp_ms: int, secret: str) -> str:
    """The base64 signature (not yet URL-encoded) of a DingTalk robot request."""
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def dingtalk_url(url: str, timestamp_ms: int, secret: str) -> str:
    """``url`` with ``timestamp`` and ``sign`` added to its query (other parameters, e.g. access_token, kept)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("timestamp", "sign")]
    query += [("timestamp", str(timestamp_ms)), ("sign", dingtalk_sign(timestamp_ms, secret))]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote_plus)))


def feishu_sign(timestamp_s: int, secret: str) -> str:
    """The base64 signature of a Feishu/Lark custom bot message (goes in the body with ``timestamp``)."""
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def verify_dingtalk(query: dict[str, str], secret: str, now_ms: int, max_skew_ms: int = 3_600_000) -> bool:
    """What a DingTalk robot checks (used by the local webhook receiver of tests and the demo)."""
    try:
        timestamp = int(query["timestamp"])
    except (KeyError, ValueError):
        return False
    if abs(now_ms - timestamp) > max_skew_ms:
        return False
    return hmac.compare_digest(query.get("sign", ""), dingtalk_sign(timestamp, secret))
