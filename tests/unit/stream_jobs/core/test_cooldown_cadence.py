"""Cooldown and per-step resolution at any logging cadence: a condition that persists through a run logged every
1, 50 or 500 steps alerts once per cooldown (max(`cooldown_steps`, `cooldown_points` logged points)), not at every
logged point, and resolves once it has been quiet that long."""

from __future__ import annotations

import random

import pytest

from rankstream.dev.synthetic import Fault, generate_run
from rankstream.schema import validate_event
from rankstream.stream_jobs.core import Engine, Output, RulesConfig
from rankstream.stream_jobs.core.alerts import Alerter, Finding, LoggingCadence, cooldown_span
from rankstream.stream_jobs.core.params import RuleSet, StragglerParams
from rankstream.stream_jobs.core.resolve import QUIET_STEPS
from tests.corekit import logged_every

#: loss_spike judged after 8 logged points (its default 32 would need 16,000 steps at cadence 500).
RULES = RulesConfig.from_dict({"rules": {"loss_spike": {"min_samples": 8}}})
#: (fault, ranks): each fault persists for two cooldowns and a bit; the spike is rewritten onto a flat loss.
CASES = {
    "nonfinite_loss": (Fault("nan_loss", 0, rank=1), [1]),
    "loss_spike": (Fault("loss_spike", 0), []),
    "straggler": (Fault("straggler", 0, rank=2), [2]),
}


def flat_loss_with_spike(events: list[dict], spike: range) -> list[dict]:
    """The loss of ``events`` rewritten as a flat 2.0 (1% noise), 1.8x on the steps of ``spike``: a synthetic
    run's loss falls too fast over a short run for a spike to stay one against the window before it, and 1.8x
    is below the 2x of a sustained spike (after which the baseline restarts)."""
    rng = random.Random(0)
    for e in events:
        if e["kind"] == "step":
            loss = 2.0 * (1.0 + 0.01 * rng.gauss(0.0, 1.0))
            e["metrics"] = {**e["metrics"], "loss": loss * (1.8 if e["step"] in spike else 1.0)}
    return events


def replay(events: list[dict]) -> Output:
    engine = Engine(RULES)
    return engine.process_many(validate_event(e) for e in events)  # no finish(): the run's end resolves all


@pytest.mark.parametrize("cadence", [1, 50, 500])
@pytest.mark.parametrize("rule", sorted(CASES))
def test_a_persisting_condition_alerts_once_per_cooldown_and_resolves_after_one(rule: str, cadence: int) -> None:
    fault, ranks = CASES[rule]
    policy = RULES.rules.params(rule)
    span = cooldown_span(policy, cadence)
    assert span == (policy.cooldown_steps if cadence == 1 else max(policy.cooldown_steps, 3 * cadence))
    start = max(12 * cadence, 40)  # past the warmup (20 steps) and the spike baseline's 8 points
    duration = 2 * span + (5 if rule == "straggler" else 1) * cadence  # a straggler is 5 slow points in a row
    quiet = max(QUIET_STEPS, policy.cooldown_steps, 3 * cadence)
    steps = start + duration + quiet + 3 * cadence
    fault = Fault(fault.kind, start, rank=fault.rank, duration=duration)
    # 0.05 s a step: a point every 25 s at cadence 500 (the liveness rules stay out of it)
    faults = [] if rule == "loss_spike" else [fault]
    events = generate_run(f"{rule}-{cadence}", 4, steps, faults=faults, seed=2, step_time_s=0.05)
    if rule == "loss_spike":
        events = flat_loss_with_spike(events, fault.steps)
    out = replay(logged_every(events, cadence))
    fired = [a for a in out.alerts if a["rule"] == rule]
    assert fired and all(a["ranks"] == ranks for a in fired), fired
    first, last_fault_point = fired[0]["step"], (start + duration - 1) // cadence * cadence
    assert start <= first < start + 5 * cadence + 10, (first, start)  # straggler: 5 points in a row first
    expected = list(range(first, last_fault_point + 1, span))
    assert [a["step"] for a in fired] == expected, (span, [a["step"] for a in fired])
    assert len(expected) == 3
    resolved = [r for r in out.resolved if r["rule"] == rule]
    assert {r["alert_id"] for r in resolved} == {a["alert_id"] for a in fired}  # once, all of them
    # the condition was last seen at the fault's last logged point; resolved at the first point a cooldown later
    assert {r["resolved_step"] for r in resolved} == {last_fault_point + max(quiet, 3 * cadence)}, resolved


def finding(step: int) -> Finding:
    return Finding("straggler", "warning", step, (1,), 1000.0 + step, "slow", {})


@pytest.mark.parametrize("cadence", [1, 10, 50, 500])
def test_the_cooldown_spans_cooldown_points_logged_points_at_a_coarse_cadence(cadence: int) -> None:
    alerter = Alerter("r")
    policy = StragglerParams(cooldown_steps=200, cooldown_points=3)
    out: list[dict] = []
    for step in range(0, 100 * cadence + 1, cadence):
        alerter.cadence.logged(step)
        alerter.emit(finding(step), policy=policy, out=out)
    gap = max(200, 3 * cadence)
    assert [a["step"] for a in out] == list(range(0, 100 * cadence + 1, gap))


def test_a_cooldown_of_zero_stays_zero_and_points_never_lengthen_cadence_one() -> None:
    for cadence in (1, 500):
        assert cooldown_span(StragglerParams(cooldown_steps=0), cadence) == 0
    for steps in (1, 2, 3, 50, 200):
        assert cooldown_span(StragglerParams(cooldown_steps=steps, cooldown_points=10), 1) == steps
    assert cooldown_span(StragglerParams(cooldown_steps=2, cooldown_points=3), 500) == 1000  # min(points, steps)
    assert RuleSet().membership_changed.cooldown_steps == 0  # every re-declaration still alerts


def test_the_cadence_is_the_median_gap_and_survives_a_restart() -> None:
    cadence = LoggingCadence()
    assert cadence.steps == 1
    for step in (1, 500, 1000, 1500, 2500, 3000):  # HF: first point at step 1; one lost point
        cadence.logged(step)
    assert cadence.steps == 500
    cadence.logged(1000)  # a resume from a checkpoint: no gap
    assert cadence.steps == 500 and cadence.last == 1000
    assert LoggingCadence(cadence.to_state()).to_state() == cadence.to_state()


def test_a_worker_restart_keeps_the_cadence_and_the_quiet_points() -> None:
    fault = Fault("nan_loss", 6000, rank=1, duration=3000)
    events = [
        validate_event(e)
        for e in logged_every(generate_run("w", 4, 12000, faults=[fault], seed=3, step_time_s=0.05), 500)
    ]
    cut = next(i for i, e in enumerate(events) if e["kind"] == "step" and e["step"] == 7000)

    def run(split: bool) -> list[tuple[str, str, int]]:
        engine = Engine(trust_first_seq=True)
        out = engine.process_many(events[:cut])
        if split:
            state = engine.export_state("w")
            engine = Engine(trust_first_seq=True)
            engine.import_state("w", state)
        out.extend(engine.process_many(events[cut:]))
        return [(a["rule"], a["state"], a["step"]) for a in out.alerts + out.resolved if a["rule"] == "nonfinite_loss"]

    whole = run(False)
    assert [s for _, state, s in whole if state == "firing"] == [6000, 7500]  # 8500 < 7500 + 1500
    assert run(True) == whole
