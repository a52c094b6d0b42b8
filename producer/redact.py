"""Make what a rank publishes safe: run metadata, tags and metric names JSON-able, bounded, and without secrets.

Training configs routinely carry API keys and hub tokens, and tags or metric
names built from a command line or an URL can too; events go to a shared topic
and a shared store, so secrets are replaced by ``"***"`` before they leave the
process: values under secret-looking keys, and values that look like
credentials wherever they appear (in ``meta``, in tag values, inside tag and
metric names). Metric values are numbers by the contract, so nothing else in
them can hold a secret.
"""

from __future__ import annotations

import dataclasses
import functools
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
    r"|[sr]k_(live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|npm_[A-Za-z0-9]{36}"  # npm
    r"|pypi-[A-Za-z0-9_\-]{16,}"  # PyPI upload token
    r"|wandb_v1_[A-Za-z0-9_\-]{16,}"  # Weights & Biases (new format)
    r")"
    r"|bearer\s+[A-Za-z0-9._~+/=\-]{8,}"
    r"|(?-i:Basic)\s+(?=[A-Za-z0-9+/]*[0-9+/])[A-Za-z0-9+/]{12,}={0,2}"  # HTTP Basic credentials
    r"|://[^/\s:@]+:[^/\s@]+@"  # URL with user:password
    r"|-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----"  # PEM / OpenSSH / PGP private keys
    r"|(aws_secret_access_key|secret_?key|account_?key|api_?key|token|password|passwd|pwd)"
    r"[\"']?\s*[=:]\s*[\"']?[^\s\"'&;,]{8,}"  # key=value / key: value assignments, query strings
    r"|hooks\.slack\.com/services/[A-Za-z0-9/]+",  # Slack webhook URL
    re.IGNORECASE,
)

MAX_DEPTH = 8
MAX_ITEMS = 1000
MAX_STR = 4096


@functools.lru_cache(maxsize=4096)
def looks_secret(value: str) -> bool:
    """True when a string contains something that looks like a credential (cached: names repeat every step)."""
    return bool(_SECRET_VALUE.search(value))


@functools.lru_cache(maxsize=4096)
def redact_name(name: str) -> str:
    """A tag or metric name with every credential-looking part replaced by ``***`` (the rest stays readable)."""
    return _SECRET_VALUE.sub(REDACTED, name) if looks_secret(name) else name


def redact_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Event tags: names cleaned like metric names; a value under a secret-looking name, or one that
    looks like a credential, becomes ``***``."""
    out: dict[str, str] = {}
    for key, value in tags.items():
        secret = is_secret_key(key, value) or looks_secret(value)
        out[redact_name(key)] = REDACTED if secret else value
    return out


def redact_metric_names(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics with credential-looking parts of their names replaced (the values are numbers)."""
    if not any(looks_secret(name) for name in metrics):
        return metrics
    return {redact_name(name): value for name, value in metrics.items()}


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
