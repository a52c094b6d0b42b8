"""Alert policy on findings: warmup modes, cooldown per (rule, ranks), ids and JSON-safe evidence."""

from __future__ import annotations

import math

from rankstream.schema import alert_id
from rankstream.stream_jobs.core.alerts import Alerter, Finding
from rankstream.stream_jobs.core.params import LossRisingParams, LossSpikeParams, MemoryPressureParams, Severity


def finding(
    rule: str, step: int, severity: Severity = "warning", ranks: tuple[int, ...] = (), warmup: bool = False
) -> Finding:
    return Finding(rule, severity, step, ranks, 1000.0 + step, f"{rule} at {step}", {"x": 1.23456789}, warmup)


def test_alert_record_from_a_finding() -> None:
    alerter = Alerter("run-1", team="vision")
    out: list[dict] = []
    alert = alerter.emit(finding("memory_pressure", 12, ranks=(3, 1)), policy=MemoryPressureParams(), out=out)
    assert out == [alert]
    assert alert is not None
    assert alert["alert_id"] == alert_id("run-1", "memory_pressure", 12, (1, 3))
    assert (alert["team"], alert["rule"], alert["severity"], alert["step"], alert["ranks"]) == (
        "vision",
        "memory_pressure",
        "warning",
        12,
        [1, 3],
    )
    assert alert["ts"] == 1012.0 and alert["evidence"] == {"x": 1.23457}


def test_warmup_modes() -> None:
    alerter = Alerter("r")
    out: list[dict] = []
    spike = alerter.emit(finding("loss_spike", 5, "critical", warmup=True), policy=LossSpikeParams(), out=out)
    assert spike is not None and spike["severity"] == "info"  # loss_spike: during_warmup=info
    assert alerter.emit(finding("loss_rising", 5, warmup=True), policy=LossRisingParams(), out=out) is None  # suppress
    assert len(out) == 1


def test_cooldown_holds_per_rule_and_ranks_unless_severity_rises() -> None:
    alerter = Alerter("r")
    out: list[dict] = []
    policy = MemoryPressureParams(cooldown_steps=10)
    alerter.emit(finding("memory_pressure", 100, ranks=(1,)), policy=policy, out=out)
    alerter.emit(finding("memory_pressure", 105, ranks=(1,)), policy=policy, out=out)  # cooled down
    alerter.emit(finding("memory_pressure", 105, ranks=(2,)), policy=policy, out=out)  # other rank
    alerter.emit(finding("memory_pressure", 106, "critical", ranks=(1,)), policy=policy, out=out)  # rises
    alerter.emit(finding("memory_pressure", 116, ranks=(1,)), policy=policy, out=out)  # cooldown over
    assert [(a["step"], a["ranks"], a["severity"]) for a in out] == [
        (100, [1], "warning"),
        (105, [2], "warning"),
        (106, [1], "critical"),
        (116, [1], "warning"),
    ]
    assert alerter.suppressed == 1


def test_non_finite_evidence_becomes_strings() -> None:
    out: list[dict] = []
    f = Finding("loss_spike", "warning", 1, (), 0.0, "m", {"z": math.inf, "ranks": [1, 2], "v": math.nan})
    Alerter("r").emit(f, policy=LossSpikeParams(), out=out)
    assert out[0]["evidence"] == {"z": "inf", "ranks": [1, 2], "v": "nan"}
