"""Rule and alignment settings: defaults, YAML overrides per team / run_name, validation.

Every threshold lives here so that docs/rules.md, the YAML file and the
detectors agree. A rules file looks like::

    alignment: {grace_min_s: 30}
    rules:
      loss_spike: {sigma: 6, cooldown_steps: 50}
    overrides:
      - match: {team: "vision-*", run_name: "*-debug"}
        rules: {memory_pressure: {enabled: false}}

Unknown keys and wrong types are errors (a typo must not silently keep a default).
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankstream.errors import ConfigError
from rankstream.schema import RULES, SEVERITIES

#: How steps are aligned and how long state is kept.
ALIGNMENT_DEFAULTS: dict[str, Any] = {
    "grace_min_s": 30.0,  # a partial step is released this long (event time) after its first event ...
    "grace_steps": 5.0,  # ... or this many median step times, whichever is longer
    "max_steps_ahead": 100,  # ... or when another rank is this many steps ahead
    "max_pending_steps": 256,  # per run; the oldest pending step is released when exceeded
    "retention_s": 3600.0,  # a run with no event for this long (event time) is evicted
    "median_window": 64,  # released steps used for the run's median step time
    "dedup_window": 4096,  # out-of-order seqs remembered per rank before a gap is given up
}

_WARMUP_MODES = ("normal", "info", "suppress")

#: Rule parameters. ``severity`` is the severity when the rule fires in its normal form.
RULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "nonfinite_loss": {"severity": "critical", "cooldown_steps": 50, "during_warmup": "normal"},
    "nonfinite_grad": {
        "severity": "critical",
        "fp16_severity": "info",  # fp16 + dynamic loss scale: an overflow is the scaler working
        "fp16_max_consecutive": 8,  # this many consecutive overflow steps -> warning
        "fp16_min_loss_scale": 1.0,  # loss scale below this -> critical (the scaler collapsed)
        "cooldown_steps": 50,
        "during_warmup": "normal",
    },
    "loss_spike": {
        "window": 128,
        "min_samples": 32,
        "sigma": 6.0,
        "min_rel": 0.05,
        "critical_ratio": 10.0,
        "sustained_ratio": 2.0,
        "sustained_steps": 5,
        "severity": "warning",
        "cooldown_steps": 50,
        "during_warmup": "info",
    },
    "loss_rising": {
        "steps": 10,
        "ewma_alpha": 0.1,
        "min_rel_rise": 0.02,
        "severity": "warning",
        "cooldown_steps": 100,
        "during_warmup": "suppress",
    },
    "loss_plateau": {
        "patience": 200,
        "min_delta": 0.01,
        "ewma_alpha": 0.05,
        "severity": "warning",
        "cooldown_steps": 200,
        "during_warmup": "suppress",
    },
    "grad_explosion": {
        "window": 128,
        "min_samples": 32,
        "ratio": 10.0,
        "critical_ratio": 100.0,
        "severity": "warning",
        "cooldown_steps": 50,
        "during_warmup": "info",
    },
    "grad_vanishing": {
        "abs_threshold": 1e-7,
        "rel_threshold": 1e-3,
        "min_samples": 32,  # relative test vs the grad_explosion window's median
        "steps": 10,
        "severity": "warning",
        "cooldown_steps": 100,
        "during_warmup": "info",
    },
    "adapter_grad_vanishing": {
        "abs_threshold": 1e-5,
        "rel_threshold": 1e-3,
        "backbone_max": 1e-12,
        "window": 128,
        "min_samples": 32,
        "steps": 10,
        "severity": "warning",
        "cooldown_steps": 100,
        "during_warmup": "info",
    },
    "straggler": {
        "score_threshold": 0.75,
        "min_extra_frac": 0.05,
        "min_extra_s": 0.005,
        "skew_frac": 0.25,
        "persist_steps": 5,
        "severity": "warning",
        "cooldown_steps": 200,
        "during_warmup": "normal",
    },
    "rank_lagging": {
        "skew_steps": 1.0,
        "persist_steps": 5,
        "severity": "warning",
        "cooldown_steps": 200,
        "during_warmup": "normal",
    },
    "rank_silent": {
        "min_s": 60.0,
        "steps": 20.0,
        "severity": "critical",
        "cooldown_steps": 1000,
        "during_warmup": "normal",
    },
    "rank_hung": {
        "min_s": 180.0,
        "steps": 50.0,
        "severity": "critical",
        "cooldown_steps": 1000,
        "during_warmup": "normal",
    },
    "memory_pressure": {
        "warn_ratio": 0.92,
        "critical_ratio": 0.98,
        "persist_steps": 3,
        "severity": "warning",
        "cooldown_steps": 200,
        "during_warmup": "normal",
    },
}
for _params in RULE_DEFAULTS.values():
    _params.setdefault("enabled", True)
assert set(RULE_DEFAULTS) == set(RULES), "every contract rule needs defaults"

_MATCH_KEYS = ("team", "run_name")


class RulesError(ConfigError):
    """A rules file or mapping that cannot be used; the message is one line naming the key (exit 2)."""


@dataclass(frozen=True)
class Resolved:
    """The effective settings for one run (defaults + matching overrides)."""

    alignment: dict[str, Any]
    rules: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Override:
    match: dict[str, str]
    alignment: dict[str, Any]
    rules: dict[str, dict[str, Any]]

    def matches(self, team: str, run_name: str) -> bool:
        values = {"team": team, "run_name": run_name}
        return all(fnmatch.fnmatchcase(values[k], pattern) for k, pattern in self.match.items())


@dataclass
class RulesConfig:
    """Defaults plus ordered overrides; :meth:`resolve` gives a run's effective settings."""

    alignment: dict[str, Any] = field(default_factory=lambda: dict(ALIGNMENT_DEFAULTS))
    rules: dict[str, dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(RULE_DEFAULTS))
    overrides: list[Override] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cache: dict[tuple[str, str], Resolved] = {}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "rules") -> RulesConfig:
        """Build from a parsed YAML mapping; raises :class:`RulesError` with the offending key."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise RulesError(f"{source}: top level must be a mapping, got {type(data).__name__}")
        _check_keys(data, ("alignment", "rules", "overrides"), source)
        cfg = cls()
        _merge_alignment(cfg.alignment, data.get("alignment"), f"{source}: alignment")
        _merge_rules(cfg.rules, data.get("rules"), f"{source}: rules")
        raw_overrides = data.get("overrides") or []
        if not isinstance(raw_overrides, list):
            raise RulesError(f"{source}: overrides must be a list")
        for i, item in enumerate(raw_overrides):
            where = f"{source}: overrides[{i}]"
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
            align: dict[str, Any] = {}
            _merge_alignment(align, item.get("alignment"), f"{where}.alignment", partial=True)
            rules: dict[str, dict[str, Any]] = {}
            _merge_rules(rules, item.get("rules"), f"{where}.rules", partial=True)
            cfg.overrides.append(Override(dict(match), align, rules))
        return cfg

    def resolve(self, team: str = "", run_name: str = "") -> Resolved:
        key = (team, run_name)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        alignment = dict(self.alignment)
        rules = {name: dict(params) for name, params in self.rules.items()}
        for ov in self.overrides:
            if ov.matches(team, run_name):
                alignment.update(ov.alignment)
                for name, params in ov.rules.items():
                    rules[name].update(params)
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


def _merge_alignment(target: dict[str, Any], raw: Any, where: str, partial: bool = False) -> None:
    if raw is None:
        return
    if not isinstance(raw, Mapping):
        raise RulesError(f"{where} must be a mapping")
    _check_keys(raw, list(ALIGNMENT_DEFAULTS), where)
    for key, value in raw.items():
        target[key] = _coerce(value, ALIGNMENT_DEFAULTS[key], f"{where}.{key}")
    for key in ("max_pending_steps", "median_window", "dedup_window"):
        if key in target and target[key] < 1:
            raise RulesError(f"{where}.{key} must be >= 1")


def _merge_rules(target: dict[str, dict[str, Any]], raw: Any, where: str, partial: bool = False) -> None:
    if raw is None:
        return
    if not isinstance(raw, Mapping):
        raise RulesError(f"{where} must be a mapping of rule name to settings")
    _check_keys(raw, list(RULE_DEFAULTS), where)
    for rule, params in raw.items():
        if params is None:
            continue
        if not isinstance(params, Mapping):
            raise RulesError(f"{where}.{rule} must be a mapping")
        defaults = RULE_DEFAULTS[rule]
        _check_keys(params, list(defaults), f"{where}.{rule}")
        dest = target.setdefault(rule, {})
        for key, value in params.items():
            coerced = _coerce(value, defaults[key], f"{where}.{rule}.{key}")
            if key.endswith("severity") and coerced not in SEVERITIES:
                raise RulesError(f"{where}.{rule}.{key} must be one of {', '.join(SEVERITIES)}, got {coerced!r}")
            if key == "during_warmup" and coerced not in _WARMUP_MODES:
                raise RulesError(f"{where}.{rule}.{key} must be one of {', '.join(_WARMUP_MODES)}, got {coerced!r}")
            if key in ("window", "min_samples", "steps", "persist_steps", "patience") and coerced < 1:
                raise RulesError(f"{where}.{rule}.{key} must be >= 1")
            if key == "ewma_alpha" and not 0.0 < coerced <= 1.0:
                raise RulesError(f"{where}.{rule}.{key} must be in (0, 1]")
            dest[key] = coerced
