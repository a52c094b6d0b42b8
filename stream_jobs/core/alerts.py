"""Alert records: deterministic ids, cooldown per (rule, ranks), JSON-safe evidence.

A rule that keeps firing would flood people; after an alert, the same
(run, rule, ranks) stays quiet for ``cooldown_steps`` steps unless the severity
rises. Cooldown counts steps (not arrival time), so replaying the same events
in another order gives the same alerts.
"""

from __future__ import annotations

from typing import Any

from rankstream.schema import SCHEMA_VERSION, alert_id, encode_metric

SEVERITY_LEVEL = {"info": 0, "warning": 1, "critical": 2}


def clean(value: Any) -> Any:
    """Evidence as plain JSON: non-finite floats become "nan"/"inf", floats keep 6 significant digits."""
    if isinstance(value, float):
        if value - value != 0.0:
            return encode_metric(value)
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def fmt(value: float) -> str:
    """A number for a human sentence."""
    if value - value != 0.0:
        return str(encode_metric(value))
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.2e}"


def severity_for(params: dict[str, Any], severity: str, warmup: bool) -> str | None:
    """The severity to use, given the rule's ``during_warmup`` mode; None means stay quiet."""
    if warmup:
        mode = params["during_warmup"]
        if mode == "suppress":
            return None
        if mode == "info":
            return "info"
    return severity


def rank_list(ranks: list[int] | tuple[int, ...]) -> str:
    if len(ranks) > 8:
        return ", ".join(str(r) for r in ranks[:8]) + f" and {len(ranks) - 8} more"
    return ", ".join(str(r) for r in ranks)


class Alerter:
    """Builds alerts for one run and applies cooldown; its state is small and exportable."""

    __slots__ = ("_last", "run_id", "suppressed", "team")

    def __init__(self, run_id: str, team: str = "") -> None:
        self.run_id = run_id
        self.team = team
        # (rule, ranks) -> (step of the last alert, its severity level)
        self._last: dict[tuple[str, tuple[int, ...]], tuple[int, int]] = {}
        self.suppressed = 0

    def emit(
        self,
        out: list[dict],
        params: dict[str, Any],
        rule: str,
        severity: str,
        step: int,
        ranks: list[int] | tuple[int, ...],
        ts: float,
        message: str,
        evidence: dict[str, Any],
        *,
        warmup: bool = False,
    ) -> dict | None:
        """Append the alert to ``out`` unless warmup mutes it (the rule's ``during_warmup``) or its
        cooldown holds; ``severity`` is the rule's severity outside warmup."""
        if warmup:
            muted = severity_for(params, severity, warmup)
            if muted is None:
                return None
            severity = muted
        ranks_t = tuple(sorted(ranks))
        key = (rule, ranks_t)
        level = SEVERITY_LEVEL[severity]
        last = self._last.get(key)
        if last is not None:
            last_step, last_level = last
            if step - last_step < params["cooldown_steps"] and level <= last_level and step >= last_step:
                self.suppressed += 1
                return None
        self._last[key] = (step, level)
        if len(self._last) > 512:
            self._prune(step)
        alert = {
            "v": SCHEMA_VERSION,
            "alert_id": alert_id(self.run_id, rule, step, ranks_t),
            "run_id": self.run_id,
            "team": self.team,
            "rule": rule,
            "severity": severity,
            "step": step,
            "ranks": list(ranks_t),
            "ts": ts,
            "message": message,
            "evidence": clean(evidence),
        }
        out.append(alert)
        return alert

    def _prune(self, step: int) -> None:
        # Entries older than any plausible cooldown go first; keep the newest 256 at most.
        items = sorted(self._last.items(), key=lambda kv: kv[1][0], reverse=True)[:256]
        self._last = dict(items)

    def to_state(self) -> list[list[Any]]:
        return [[rule, list(ranks), step, level] for (rule, ranks), (step, level) in self._last.items()]

    def load_state(self, state: list[list[Any]]) -> None:
        self._last = {(rule, tuple(ranks)): (int(step), int(level)) for rule, ranks, step, level in state}
