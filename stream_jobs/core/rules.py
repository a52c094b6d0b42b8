"""Rule and alignment settings: defaults, YAML overrides per team / run_name, validation.

The settings themselves (names, defaults, meanings) are the dataclasses of
``params``; this module reads a rules file into them. A rules file looks like::

    alignment: {grace_min_s: 30}
    rules:
      loss_spike: {sigma: 6, cooldown_steps: 50}
    overrides:
      - match: {team: "vision-*", run_name: "*-debug"}
        rules: {memory_pressure: {enabled: false}}

Unknown keys and wrong types are errors (a typo must not silently keep a default).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rankstream.errors import ConfigError
from rankstream.schema import SEVERITIES
from rankstream.stream_jobs.core.params import (
    RULE_PARAMS,
    WARMUP_MODES,
    AlignmentParams,
    RuleSet,
    defaults_of,
)

_ALIGNMENT_DEFAULTS = defaults_of(AlignmentParams)
_RULE_DEFAULTS = {rule: defaults_of(cls) for rule, cls in RULE_PARAMS.items()}
_MATCH_KEYS = ("team", "run_name")
#: Keys counting steps or samples: 0 would make a rule fire on nothing or never.
_AT_LEAST_ONE = (
    "window",
    "min_samples",
    "steps",
    "persist_steps",
    "patience",
    "min_points",
    "confirm",
    "trend_points",
    "trend_window_steps",
    "sub_step_persist",
    "recover_steps",
    "evals",
)
_ALIGNMENT_AT_LEAST_ONE = ("max_pending_steps", "median_window", "dedup_window")

#: Validated changes of one rules-file section: ``{rule: {key: value}}``.
RuleChanges = dict[str, dict[str, Any]]


class RulesError(ConfigError):
    """A rules file or mapping that cannot be used; the message is one line naming the key (exit 2)."""


@dataclass(frozen=True)
class Resolved:
    """The effective settings for one run (defaults + matching overrides)."""

    alignment: AlignmentParams
    rules: RuleSet


@dataclass(frozen=True)
class Override:
    """Changes that apply to the runs whose team / run_name match every glob in ``match``."""

    match: dict[str, str]
    alignment: dict[str, Any]
    rules: RuleChanges

    def matches(self, team: str, run_name: str) -> bool:
        values = {"team": team, "run_name": run_name}
        return all(fnmatch.fnmatchcase(values[k], pattern) for k, pattern in self.match.items())


@dataclass
class RulesConfig:
    """Defaults plus ordered overrides; :meth:`resolve` gives a run's effective settings."""

    alignment: AlignmentParams = field(default_factory=AlignmentParams)
    rules: RuleSet = field(default_factory=RuleSet)
    overrides: list[Override] = field(default_factory=list)

    def __post_init__(self) -> None:
        #: Resolved settings per set of matching overrides (their indices): a handful of entries however
        #: many runs (a cache per team / run_name grew with every run ever seen).
        self._cache: dict[tuple[int, ...], Resolved] = {}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "rules") -> RulesConfig:
        """Build from a parsed YAML mapping; raises :class:`RulesError` with the offending key."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise RulesError(f"{source}: top level must be a mapping, got {type(data).__name__}")
        _check_keys(data, ("alignment", "rules", "overrides"), source)
        alignment = _alignment_changes(data.get("alignment"), f"{source}: alignment")
        rules = _rule_changes(data.get("rules"), f"{source}: rules")
        cfg = cls(replace(AlignmentParams(), **alignment), RuleSet().with_changes(rules))
        raw_overrides = data.get("overrides") or []
        if not isinstance(raw_overrides, list):
            raise RulesError(f"{source}: overrides must be a list")
        for i, item in enumerate(raw_overrides):
            cfg.overrides.append(_override(item, f"{source}: overrides[{i}]"))
        return cfg

    def resolve(self, team: str = "", run_name: str = "") -> Resolved:
        """The settings of a run: defaults changed by every matching override, in file order.

        Runs that match the same overrides get the same (identical) objects."""
        key = tuple(i for i, ov in enumerate(self.overrides) if ov.matches(team, run_name))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        alignment = self.alignment
        rules = self.rules
        for i in key:
            ov = self.overrides[i]
            if ov.alignment:
                alignment = replace(alignment, **ov.alignment)
            rules = rules.with_changes(ov.rules)
        resolved = Resolved(alignment, rules)
        self._cache[key] = resolved
        return resolved


def load_rules(path: str | Path | None) -> RulesConfig:
    """Defaults when ``path`` is None, else the YAML file validated (RulesError on any problem)."""
    if path is None:
        return RulesConfig()
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError(f"rules file not found: {p}") from None
    except OSError as exc:
        raise RulesError(f"cannot read rules file {p}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RulesError(f"{p}: invalid YAML{where}: {problem}") from None
    return RulesConfig.from_dict(data, source=str(p))


# ----------------------------------------------------------------------- validation


def _check_keys(data: Mapping[str, Any], known: tuple[str, ...] | list[str], where: str) -> None:
    for key in data:
        if key not in known:
            raise RulesError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise RulesError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise RulesError(f"{where} must be an integer, got {value!r}")
        if value < 0:
            raise RulesError(f"{where} must be >= 0, got {value}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RulesError(f"{where} must be a number, got {value!r}")
        if value != value or value < 0 or value == float("inf"):
            raise RulesError(f"{where} must be a finite number >= 0, got {value!r}")
        return float(value)
    if isinstance(value, str):
        return value
    raise RulesError(f"{where} must be a string, got {value!r}")


def _override(item: Any, where: str) -> Override:
    if not isinstance(item, Mapping):
        raise RulesError(f"{where} must be a mapping")
    _check_keys(item, ("match", "alignment", "rules"), where)
    match = item.get("match")
    if not isinstance(match, Mapping) or not match:
        raise RulesError(f"{where}.match must be a non-empty mapping with keys {', '.join(_MATCH_KEYS)}")
    _check_keys(match, _MATCH_KEYS, f"{where}.match")
    for k, v in match.items():
        if not isinstance(v, str):
            raise RulesError(f"{where}.match.{k} must be a string (a glob pattern)")
    alignment = _alignment_changes(item.get("alignment"), f"{where}.alignment")
    rules = _rule_changes(item.get("rules"), f"{where}.rules")
    return Override(dict(match), alignment, rules)


def _alignment_changes(raw: Any, where: str) -> dict[str, Any]:
    """The validated ``{key: value}`` of an ``alignment:`` section."""
    changes: dict[str, Any] = {}
    if raw is None:
        return changes
    if not isinstance(raw, Mapping):
        raise RulesError(f"{where} must be a mapping")
    _check_keys(raw, list(_ALIGNMENT_DEFAULTS), where)
    for key, value in raw.items():
        changes[key] = _coerce(value, _ALIGNMENT_DEFAULTS[key], f"{where}.{key}")
    for key in _ALIGNMENT_AT_LEAST_ONE:
        if key in changes and changes[key] < 1:
            raise RulesError(f"{where}.{key} must be >= 1")
    return changes


def _rule_changes(raw: Any, where: str) -> RuleChanges:
    """The validated ``{rule: {key: value}}`` of a ``rules:`` section."""
    changes: RuleChanges = {}
    if raw is None:
        return changes
    if not isinstance(raw, Mapping):
        raise RulesError(f"{where} must be a mapping of rule name to settings")
    _check_keys(raw, list(_RULE_DEFAULTS), where)
    for rule, params in raw.items():
        if params is None:
            continue
        if not isinstance(params, Mapping):
            raise RulesError(f"{where}.{rule} must be a mapping")
        defaults = _RULE_DEFAULTS[rule]
        _check_keys(params, list(defaults), f"{where}.{rule}")
        dest = changes.setdefault(rule, {})
        for key, value in params.items():
            coerced = _coerce(value, defaults[key], f"{where}.{rule}.{key}")
            if key.endswith("severity") and coerced not in SEVERITIES:
                raise RulesError(f"{where}.{rule}.{key} must be one of {', '.join(SEVERITIES)}, got {coerced!r}")
            if key == "during_warmup" and coerced not in WARMUP_MODES:
                raise RulesError(f"{where}.{rule}.{key} must be one of {', '.join(WARMUP_MODES)}, got {coerced!r}")
            if key in _AT_LEAST_ONE and coerced < 1:
                raise RulesError(f"{where}.{rule}.{key} must be >= 1")
            if key == "ewma_alpha" and not 0.0 < coerced <= 1.0:
                raise RulesError(f"{where}.{rule}.{key} must be in (0, 1]")
            dest[key] = coerced
    return changes
