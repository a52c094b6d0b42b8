"""The notifier's YAML configuration: receivers, routes, grouping, retries; secrets from env or files.

```yaml
group_wait_s: 10          # chat: one message per run and receiver per window
resolve_after_s: 900      # AlertManager: endsAt of a firing alert (it resolves it then by itself)
retry: {attempts: 6, backoff_s: 0.5, max_backoff_s: 30}
generator_url: "http://127.0.0.1:8123/play?run_id={run_id}"
receivers:
  am:    {kind: alertmanager, url: "http://127.0.0.1:9093"}
  slack: {kind: slack, url: "${SLACK_WEBHOOK_URL}"}
  ding:  {kind: dingtalk, url: "https://oapi.dingtalk.com/robot/send?access_token=${DING_TOKEN}",
          secret_file: /run/secrets/dingtalk}
routes:
  - receivers: [am]                                   # no match: every alert
  - match: {team: [nlp], severity: [warning, critical]}
    receivers: [slack, ding]
```

Every route whose ``match`` holds adds its receivers (a union: an alert goes to
each receiver once). ``${NAME}`` is replaced by the environment variable
``NAME`` in ``url`` and ``secret``; ``secret_file`` reads the secret from a
file. URLs and secrets are :class:`Secret` values: their ``repr``/``str`` hide
them, and the notifier logs receivers by name only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankstream.config import read_yaml_file
from rankstream.errors import ConfigError
from rankstream.schema import SEVERITIES

KINDS = ("alertmanager", "slack", "dingtalk", "feishu", "webhook")
MATCH_KEYS = ("team", "severity", "rule", "run_id")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Secret:
    """A string that never shows in logs, reprs or exception messages; ``reveal()`` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True)
class Receiver:
    """Where notifications go: ``kind`` says the payload (and signature) format."""

    name: str
    kind: str
    url: Secret
    secret: Secret = field(default_factory=lambda: Secret(""))
    timeout_s: float = 5.0

    @property
    def grouped(self) -> bool:
        """Chat receivers get one message per run per window; AlertManager groups by itself."""
        return self.kind != "alertmanager"


@dataclass(frozen=True)
class Route:
    """Receivers for alerts whose fields are in ``match`` (an empty match takes every alert)."""

    receivers: tuple[str, ...]
    match: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def matches(self, fields: Mapping[str, str]) -> bool:
        return all(fields.get(key, "") in allowed for key, allowed in self.match.items())


@dataclass(frozen=True)
class Retry:
    attempts: int = 6
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def delay(self, failures: int) -> float:
        """Seconds before the next attempt after ``failures`` failed ones (doubling, capped)."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** max(0, failures - 1)))


@dataclass(frozen=True)
class NotifyConfig:
    receivers: Mapping[str, Receiver]
    routes: tuple[Route, ...]
    group_wait_s: float = 10.0
    resolve_after_s: float = 900.0
    retry: Retry = field(default_factory=Retry)
    generator_url: str = ""
    dedup_size: int = 100_000

    def receivers_for(self, fields: Mapping[str, str]) -> list[Receiver]:
        """The receivers of every matching route, each once, in configuration order."""
        names: dict[str, None] = {}
        for route in self.routes:
            if route.matches(fields):
                names.update(dict.fromkeys(route.receivers))
        return [self.receivers[name] for name in names]


def expand_env(text: str, env: Mapping[str, str], where: str) -> str:
    """Replace ``${NAME}`` with the variable's value; an unset variable is a configuration error."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return env[name]

    return _ENV_REF.sub(sub, text)


def _float(raw: Mapping[str, Any], key: str, default: float, where: str, minimum: float = 0.0) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"{where}{key}: expected a number >= {minimum}, got {value!r:.40}")
    return float(value)


def _receiver(name: str, raw: Any, env: Mapping[str, str]) -> Receiver:
    where = f"receivers.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: expected one of {', '.join(KINDS)}, got {kind!r:.40}")
    url = raw.get("url")
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where}.url: required")
    url = expand_env(url, env, f"{where}.url")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url: expected an http(s) URL")  # the value itself may hold a token
    secret = raw.get("secret", "")
    if not isinstance(secret, str):
        raise ConfigError(f"{where}.secret: expected a string")
    secret = expand_env(secret, env, f"{where}.secret")
    if "secret_file" in raw:
        path = Path(expand_env(str(raw["secret_file"]), env, f"{where}.secret_file")).expanduser()
        try:
            secret = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}.secret_file: cannot read {path}: {exc.strerror}") from None
    timeout = _float(raw, "timeout_s", 5.0, f"{where}.", minimum=0.1)
    return Receiver(name=name, kind=kind, url=Secret(url), secret=Secret(secret), timeout_s=timeout)


def _route(index: int, raw: Any, receivers: Mapping[str, Receiver]) -> Route:
    where = f"routes[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    names = raw.get("receivers")
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names:
        raise ConfigError(f"{where}.receivers: expected a list of receiver names")
    for name in names:
        if name not in receivers:
            raise ConfigError(f"{where}.receivers: unknown receiver {name!r:.60}")
    match_raw = raw.get("match") or {}
    if not isinstance(match_raw, dict):
        raise ConfigError(f"{where}.match: expected a mapping")
    match: dict[str, frozenset[str]] = {}
    for key, allowed in match_raw.items():
        if key not in MATCH_KEYS:
            raise ConfigError(f"{where}.match: unknown key {key!r:.40} (expected {', '.join(MATCH_KEYS)})")
        values = [allowed] if isinstance(allowed, str) else allowed
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{where}.match.{key}: expected a string or a list of strings")
        if key == "severity" and not set(values) <= set(SEVERITIES):
            raise ConfigError(f"{where}.match.severity: expected among {', '.join(SEVERITIES)}")
        match[key] = frozenset(values)
    return Route(receivers=tuple(names), match=match)


def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> NotifyConfig:
    """Build the configuration from parsed YAML; every problem is a :class:`ConfigError` naming the key."""
    env = os.environ if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError("notify config: expected a mapping at the top level")
    receivers_raw = raw.get("receivers")
    if not isinstance(receivers_raw, dict) or not receivers_raw:
        raise ConfigError("receivers: at least one receiver is required")
    receivers = {str(name): _receiver(str(name), spec, env) for name, spec in receivers_raw.items()}
    routes_raw = raw.get("routes")
    if routes_raw is None:
        routes_raw = [{"receivers": list(receivers)}]  # no routes: every alert to every receiver
    if not isinstance(routes_raw, list):
        raise ConfigError("routes: expected a list")
    routes = tuple(_route(i, spec, receivers) for i, spec in enumerate(routes_raw))
    retry_raw = raw.get("retry") or {}
    if not isinstance(retry_raw, dict):
        raise ConfigError("retry: expected a mapping")
    attempts = retry_raw.get("attempts", 6)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ConfigError(f"retry.attempts: expected an integer >= 1, got {attempts!r:.40}")
    retry = Retry(
        attempts=attempts,
        backoff_s=_float(retry_raw, "backoff_s", 0.5, "retry."),
        max_backoff_s=_float(retry_raw, "max_backoff_s", 30.0, "retry."),
    )
    generator_url = raw.get("generator_url", "")
    if not isinstance(generator_url, str):
        raise ConfigError("generator_url: expected a string")
    dedup = raw.get("dedup_size", 100_000)
    if isinstance(dedup, bool) or not isinstance(dedup, int) or dedup < 1:
        raise ConfigError("dedup_size: expected an integer >= 1")
    return NotifyConfig(
        receivers=receivers,
        routes=routes,
        group_wait_s=_float(raw, "group_wait_s", 10.0, ""),
        resolve_after_s=_float(raw, "resolve_after_s", 900.0, "", minimum=1.0),
        retry=retry,
        generator_url=generator_url,
        dedup_size=dedup,
    )


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> NotifyConfig:
    """Read and parse a notify YAML file."""
    return parse_config(read_yaml_file(path, "notify config"), env)


def alertmanager_only(url: str) -> NotifyConfig:
    """The configuration of ``rankstream notify --alertmanager URL`` without a file: every alert there."""
    return parse_config({"receivers": {"alertmanager": {"kind": "alertmanager", "url": url}}}, env={})
