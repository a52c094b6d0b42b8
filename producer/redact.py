"""Make run metadata safe to publish: JSON-able, bounded, and without secrets.

Training configs routinely carry API keys and hub tokens; run_start goes to a
shared topic and a shared store, so secrets are replaced by ``"***"`` before
they leave the process: values under secret-looking keys, and values that look
like credentials wherever they appear.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"

# Always secret, whatever the value type.
_STRONG_KEY = re.compile(r"secret|passw(or)?d|pwd|credential|private", re.IGNORECASE)
# Secret when the value is text or a container; plain numbers under these keys
# (num_key_value_heads, max_tokens, pad_token_id) are model settings, not secrets.
_WEAK_KEY = re.compile(r"key|token(?!i[sz](er|ation))|auth", re.IGNORECASE)
# Values that look like credentials anywhere in a string.
_SECRET_VALUE = re.compile(
    r"(?<![A-Za-z0-9])("
    r"sk-[A-Za-z0-9_\-]{8,}"  # OpenAI-style
    r"|hf_[A-Za-z0-9]{8,}"  # Hugging Face
    r"|gh[pousr]_[A-Za-z0-9]{16,}"  # GitHub
    r"|github_pat_[A-Za-z0-9_]{16,}"
    r"|(AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|xox[abposr]-[A-Za-z0-9\-]{8,}"  # Slack
    r"|glpat-[A-Za-z0-9_\-]{16,}"  # GitLab
    r"|AIza[0-9A-Za-z_\-]{30,}"  # Google API key
    r"|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]*"  # JWT
    r")"
    r"|bearer\s+[A-Za-z0-9._~+/=\-]{8,}"
    r"|://[^/\s:@]+:[^/\s@]+@",  # URL with user:password
    re.IGNORECASE,
)

MAX_DEPTH = 8
MAX_ITEMS = 1000
MAX_STR = 4096


def looks_secret(value: str) -> bool:
    """True when a string contains something that looks like a credential."""
    return bool(_SECRET_VALUE.search(value))


def is_secret_key(key: str, value: Any) -> bool:
    if _STRONG_KEY.search(key):
        return True
    if _WEAK_KEY.search(key):
        return not (value is None or isinstance(value, bool | int | float))
    return False


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = value if isinstance(value, str) else _text_of(value)
    if looks_secret(text):
        return REDACTED
    return text if len(text) <= MAX_STR else text[:MAX_STR] + "..."


def _text_of(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _as_mapping(value: Any) -> Mapping[str, Any] | None:
    if isinstance(value, Mapping):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
    to_dict = getattr(value, "to_dict", None)  # HF configs, TrainingArguments, argparse-like objects
    if callable(to_dict) and not isinstance(value, type):
        try:
            out = to_dict()
        except Exception:
            return None
        return out if isinstance(out, Mapping) else None
    if hasattr(value, "__dict__") and type(value).__module__ == "argparse":  # argparse.Namespace
        return vars(value)
    return None


def redact(value: Any, depth: int = 0) -> Any:
    """A JSON-able, redacted, size-bounded copy of ``value`` (dicts, lists, dataclasses, configs)."""
    if depth > MAX_DEPTH:
        return "<too deep>"
    mapping = _as_mapping(value)
    if mapping is not None:
        out: dict[str, Any] = {}
        for i, (key, item) in enumerate(mapping.items()):
            if i >= MAX_ITEMS:
                out["_truncated"] = True
                break
            name = _text_of(key)
            out[name] = REDACTED if is_secret_key(name, item) else redact(item, depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)[:MAX_ITEMS]
        return [redact(item, depth + 1) for item in items]
    return _scalar(value)


def redact_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """run_start ``meta``: the contract's fields plus anything else the caller gave, redacted."""
    if not meta:
        return {}
    out = redact(dict(meta))
    return out if isinstance(out, dict) else {}
