"""Every detection rule, positive and negative, on synthetic runs (tests/unit, no broker)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rankstream.dev.synthetic import Fault, expected_rules, generate_run
from rankstream.schema import RULES, alert_id, dumps, validate_event
from rankstream.stream_jobs.core import Engine, Output, RulesConfig, RulesError, load_rules

SERIOUS = ("warning", "critical")


def replay(events: list[dict], rules: RulesConfig | None = None) -> tuple[Output, Engine]:
    engine = Engine(rules)
    out = engine.process_many(validate_event(e) for e in events)
    out.extend(engine.finish())
    return out, engine


def serious(out: Output) -> Counter[str]:
    return Counter(a["rule"] for a in out.alerts if a["severity"] in SERIOUS)


# (fault, generate_run kwargs): one scenario per rule; rank 1 where the fault targets a rank.
SCENARIOS = {
    "nonfinite_loss": (Fault("nan_loss", 100, rank=1), {}),
    "nonfinite_grad": (Fault("nan_grad", 100), {}),
    "loss_spike": (Fault("loss_spike", 100), {}),
    "loss_rising": (Fault("loss_rising", 100), {}),
    "loss_plateau": (Fault("plateau", 60), {"steps": 600}),
    "grad_explosion": (Fault("grad_explosion", 100), {}),
    "grad_vanishing": (Fault("grad_vanishing", 100), {}),
    "adapter_grad_vanishing": (Fault("adapter_vanishing", 100), {"lora": True}),
    "straggler": (Fault("straggler", 100, rank=1), {}),
    "rank_lagging": (Fault("lagging", 100, rank=1), {}),
    "rank_silent": (Fault("silent", 100, rank=1), {}),
    "rank_hung": (Fault("hung", 100, rank=1), {"steps": 600}),
    "memory_pressure": (Fault("memory_pressure", 100, rank=1), {}),
}
PER_RANK = {"nonfinite_loss", "straggler", "rank_lagging", "rank_silent", "rank_hung", "memory_pressure"}


#: Rules about a run's life rather than its numbers: their scenarios (relaunch, elastic, whole-job death) are
#: in test_lifecycles.py.
LIFECYCLE_RULES = {"run_lost", "membership_changed", "clock_skew"}
#: Rules over eval events (the synthetic runs send none): their scenarios are in test_eval.py.
EVAL_RULES = {"eval_loss_rising"}


def test_every_contract_rule_has_a_scenario() -> None:
    assert set(SCENARIOS) | LIFECYCLE_RULES | EVAL_RULES == set(RULES)
    assert {expected_rules([f]).pop() for f, _ in SCENARIOS.values()} == set(RULES) - LIFECYCLE_RULES - EVAL_RULES


@pytest.mark.parametrize("rule", sorted(SCENARIOS))
def test_rule_fires_on_its_fault_and_only_there(rule: str) -> None:
    fault, kwargs = SCENARIOS[rule]
    kwargs = {"steps": 400, **kwargs}
    out, _ = replay(generate_run(f"run-{rule}", 4, faults=[fault], **kwargs))
    fired = [a for a in out.alerts if a["rule"] == rule and a["severity"] in SERIOUS]
    assert fired, f"{rule} did not fire: {[(a['rule'], a['severity']) for a in out.alerts]}"
    first = fired[0]
    assert first["step"] >= fault.step, "an alert before the fault is a false positive"
    assert first["step"] <= fault.step + {"loss_plateau": 350, "rank_hung": 400}.get(rule, 200)
    if rule in PER_RANK:
        assert first["ranks"] == [1]
    assert first["team"] == "team-a"
    assert first["alert_id"] == alert_id(first["run_id"], rule, first["step"], first["ranks"])
    assert first["message"].endswith(".") and "\n" not in first["message"]
    assert first["evidence"], "evidence carries the numbers"
    dumps(first)  # JSON-safe (orjson refuses NaN)
    # Cooldown: one fault window does not page twice for the same (rule, ranks).
    keys = Counter((a["rule"], tuple(a["ranks"]), a["severity"]) for a in fired)
    assert max(keys.values()) == 1, keys


@pytest.mark.parametrize("world_size", [1, 4])
def test_healthy_run_with_noisy_warmup_raises_nothing(world_size: int) -> None:
    events = generate_run("healthy", world_size, 500, warmup_steps=60, seed=3)
    out, engine = replay(events)
    assert out.alerts == []
    assert len(out.steps) == 500
    assert sum(s["warmup"] for s in out.steps) == 60
    assert engine.stats["partial_steps"] == 0


def test_healthy_runs_across_seeds_raise_nothing_serious() -> None:
    for seed in range(5):
        out, _ = replay(generate_run(f"seed{seed}", 8, 300, seed=seed))
        assert serious(out) == Counter(), seed


def test_warmup_oscillation_is_not_an_alert_even_with_a_spike_inside() -> None:
    events = generate_run("warm", 4, 300, warmup_steps=120, faults=[Fault("loss_spike", 80)])
    out, _ = replay(events)
    assert serious(out) == Counter()


def test_warmup_inferred_from_rising_lr_when_no_stage_tag() -> None:
    events = generate_run("nostage", 2, 200, warmup_steps=50, stage_tags=False)
    out, _ = replay(events)
    assert [s["warmup"] for s in out.steps[:50]] == [False] + [True] * 49  # first step has no previous lr
    assert not any(s["warmup"] for s in out.steps[50:])
    assert out.alerts == []


def test_spike_during_a_later_warmup_is_at_most_info() -> None:
    # A schedule restart re-warms after the window is established: the spike is downgraded to info.
    events = generate_run("rewarm", 2, 300, faults=[Fault("loss_spike", 210)])
    for ev in events:
        if ev["kind"] == "step" and 200 <= ev["step"] < 230:
            ev["tags"] = {**ev["tags"], "stage": "warmup"}
    out, _ = replay(events)
    spikes = [a for a in out.alerts if a["rule"] == "loss_spike"]
    assert [a["severity"] for a in spikes] == ["info"]
    assert serious(out) == Counter()


def test_fp16_overflow_with_scale_halving_is_info_only() -> None:
    events = generate_run("fp16", 4, 300, precision="fp16", faults=[Fault("fp16_overflow", 120)])
    out, _ = replay(events)
    grads = [a for a in out.alerts if a["rule"] == "nonfinite_grad"]
    assert [a["severity"] for a in grads] == ["info"]
    ev = grads[0]["evidence"]
    assert ev["scale_reduced"] is True and ev["loss_scale"] == ev["prev_loss_scale"] / 2
    assert serious(out) == Counter()


def test_fp16_overflow_storm_escalates() -> None:
    events = generate_run("fp16storm", 2, 300, precision="fp16", faults=[Fault("fp16_overflow", 100, duration=20)])
    out, _ = replay(events)
    sev = {a["severity"] for a in out.alerts if a["rule"] == "nonfinite_grad"}
    assert "warning" in sev or "critical" in sev


def test_nonfinite_grad_in_bf16_is_critical() -> None:
    out, _ = replay(generate_run("bf16", 2, 200, faults=[Fault("nan_grad", 100)]))
    assert [a["severity"] for a in out.alerts if a["rule"] == "nonfinite_grad"] == ["critical"]


def test_healthy_lora_with_frozen_backbone_raises_nothing() -> None:
    out, _ = replay(generate_run("lora", 4, 400, lora=True))
    assert out.alerts == []
    assert out.steps[-1]["metrics"]["grad_norm_backbone"]["max"] == 0.0


def test_adapter_vanishing_is_not_reported_as_grad_vanishing() -> None:
    out, _ = replay(generate_run("lora2", 2, 300, lora=True, faults=[Fault("adapter_vanishing", 100)]))
    rules = serious(out)
    assert rules["adapter_grad_vanishing"] == 1
    assert rules["grad_vanishing"] == 0


def test_lagging_rank_is_not_a_straggler_and_straggler_not_lagging() -> None:
    lag, _ = replay(generate_run("lag", 4, 300, faults=[Fault("lagging", 100, rank=2)]))
    assert serious(lag) == Counter({"rank_lagging": 1})
    strag, _ = replay(generate_run("strag", 4, 300, faults=[Fault("straggler", 100, rank=2)]))
    assert serious(strag) == Counter({"straggler": 1})


def test_short_straggler_blip_is_not_persistent() -> None:
    events = generate_run("blip", 4, 300, faults=[Fault("straggler", 100, rank=2)])
    rank0 = {ev["step"]: ev["metrics"]["compute_time_s"] for ev in events if ev["kind"] == "step" and ev["rank"] == 0}
    for ev in events:  # undo the fault after 3 steps
        if ev["kind"] == "step" and ev["rank"] == 2 and ev["step"] >= 103:
            ev["metrics"]["compute_time_s"] = rank0[ev["step"]]
    out, _ = replay(events)
    assert "straggler" not in serious(out)


def test_straggler_from_ts_skew_when_no_timing_metrics() -> None:
    events = generate_run("skew", 4, 300, faults=[Fault("straggler", 100, rank=3, magnitude=2.5)])
    for ev in events:
        ev["metrics"].pop("compute_time_s", None)
        ev["metrics"].pop("data_time_s", None)
    out, _ = replay(events)
    hits = [a for a in out.alerts if a["rule"] == "straggler"]
    assert hits and hits[0]["ranks"] == [3] and hits[0]["evidence"]["signal"] == "ts skew"


def test_memory_pressure_critical_above_critical_ratio() -> None:
    out, _ = replay(generate_run("oom", 2, 200, faults=[Fault("memory_pressure", 100, rank=1, magnitude=0.99)]))
    mem = [a for a in out.alerts if a["rule"] == "memory_pressure"]
    assert mem[0]["severity"] == "critical" and mem[0]["step"] == 100


def test_short_silence_below_threshold_is_not_silent() -> None:
    # Rank 1 stops 20 s before the end: below the 60 s default.
    out, _ = replay(generate_run("quiet", 4, 300, faults=[Fault("silent", 260, rank=1)]))
    assert "rank_silent" not in serious(out)


def test_hung_vs_silent_are_distinguished() -> None:
    hung, _ = replay(generate_run("hung", 4, 600, faults=[Fault("hung", 100, rank=2)]))
    assert serious(hung)["rank_silent"] == 0 and serious(hung)["rank_hung"] == 1
    silent, _ = replay(generate_run("dead", 4, 400, faults=[Fault("silent", 100, rank=2)]))
    assert serious(silent)["rank_hung"] == 0 and serious(silent)["rank_silent"] == 1


def test_whole_job_stall_is_hung_for_all_ranks() -> None:
    events = generate_run("stall", 2, 200, heartbeat_every_s=5.0)
    last = events[-1]["ts"]
    for k in range(1, 121):  # heartbeats keep coming for 10 minutes, steps do not
        for r in range(2):
            events.append(
                {
                    **events[0],
                    "kind": "heartbeat",
                    "rank": r,
                    "step": 199,
                    "seq": 10_000 + k,
                    "ts": last + 5.0 * k,
                    "metrics": {},
                    "tags": {},
                    "meta": {},
                }
            )
    events = [e for e in events if e["kind"] != "run_end"]
    out, _ = replay(events)
    hung = [a for a in out.alerts if a["rule"] == "rank_hung"]
    assert hung and hung[0]["ranks"] == [0, 1] and "whole job" in hung[0]["message"]


def test_advance_fires_silent_without_new_events_and_is_idempotent() -> None:
    events = generate_run("adv", 4, 200, faults=[Fault("silent", 180, rank=3)])
    events = [e for e in events if e["kind"] != "run_end"]
    engine = Engine()
    out = engine.process_many(validate_event(e) for e in events)
    assert "rank_silent" not in {a["rule"] for a in out.alerts}
    last = max(e["ts"] for e in events)
    last3 = max(e["ts"] for e in events if e["rank"] == 3)
    assert last3 + 60.0 < last + 58.0
    # No more events arrive: only the caller's clock can reveal that rank 3 went quiet.
    assert "rank_silent" not in {a["rule"] for a in engine.advance(last + 1.0).alerts}
    fired = engine.advance(last + 58.0).alerts
    silent = [a for a in fired if a["rule"] == "rank_silent"]
    assert len(silent) == 1 and silent[0]["ranks"] == [3] and silent[0]["ts"] == last + 58.0
    assert engine.advance(last + 58.0).alerts == []  # idempotent for the same now
    assert engine.advance(last + 58.0).steps == []


def test_cooldown_suppresses_repeats_but_lets_escalation_through() -> None:
    faults = [Fault("loss_spike", 100), Fault("loss_spike", 110), Fault("loss_spike", 200, magnitude=30.0)]
    out, _ = replay(generate_run("cool", 2, 300, faults=faults))
    spikes = [(a["step"], a["severity"]) for a in out.alerts if a["rule"] == "loss_spike"]
    assert spikes == [(100, "warning"), (200, "critical")]


# ---------------------------------------------------------------------- config


def test_rules_yaml_overrides_and_team_pattern(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "alignment: {grace_min_s: 10}\n"
        "rules:\n  loss_spike: {sigma: 8}\n"
        "overrides:\n"
        "  - match: {team: 'team-*'}\n    rules: {memory_pressure: {enabled: false}}\n"
        "  - match: {run_name: '*-debug'}\n    rules: {loss_spike: {sigma: 3.5, cooldown_steps: 5}}\n"
    )
    cfg = load_rules(path)
    assert cfg.alignment.grace_min_s == 10.0
    base = cfg.resolve("other", "x")
    assert base.rules.loss_spike.sigma == 8.0 and base.rules.memory_pressure.enabled is True
    team = cfg.resolve("team-a", "x")
    assert team.rules.memory_pressure.enabled is False
    dbg = cfg.resolve("team-a", "m-debug")
    assert dbg.rules.loss_spike.sigma == 3.5 and dbg.rules.memory_pressure.enabled is False
    # The override applies to a run once its run_start says which team it belongs to.
    out, _ = replay(generate_run("r", 2, 200, faults=[Fault("memory_pressure", 100, rank=1)]), cfg)
    assert "memory_pressure" not in {a["rule"] for a in out.alerts}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("rules: {loss_spik: {sigma: 3}}", "unknown key 'loss_spik'"),
        ("rules: {loss_spike: {sigmaa: 3}}", "unknown key 'sigmaa'"),
        ("rules: {loss_spike: {sigma: high}}", "loss_spike.sigma must be a number"),
        ("rules: {loss_spike: {severity: urgent}}", "must be one of info, warning, critical"),
        ("rules: {loss_spike: {window: 0}}", "window must be >= 1"),
        ("rules: {loss_rising: {trend_points: 0}}", "loss_rising.trend_points must be >= 1"),
        ("rules: {eval_loss_rising: {evals: 0}}", "eval_loss_rising.evals must be >= 1"),
        ("alignment: {grace_min_s: -1}", "grace_min_s must be a finite number >= 0"),
        ("overrides: [{match: {}}]", "match must be a non-empty mapping"),
        ("overrides: [{match: {user: x}}]", "unknown key 'user'"),
        ("rules: [1, 2]", "must be a mapping"),
        ("rules: {loss_spike: {sigma: 3}", "invalid YAML"),
    ],
)
def test_rules_file_errors_are_one_clear_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RulesError) as info:
        load_rules(path)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_missing_rules_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="rules file not found"):
        load_rules(tmp_path / "nope.yaml")
    assert load_rules(None).rules.loss_spike.sigma == 6.0


def test_disabled_rule_is_quiet() -> None:
    cfg = RulesConfig.from_dict({"rules": {"nonfinite_loss": {"enabled": False}}})
    out, _ = replay(generate_run("off", 2, 200, faults=[Fault("nan_loss", 100)]), cfg)
    assert "nonfinite_loss" not in {a["rule"] for a in out.alerts}


def test_millisecond_jitter_of_tiny_steps_is_not_a_straggler() -> None:
    """Steps of a few ms on a busy CPU (the demo): a rank 1 ms slower is noise, not a straggler."""
    events = generate_run("tiny", 4, 300, step_time_s=0.004, faults=[Fault("straggler", 100, rank=2)])
    for ev in events:
        for name in ("compute_time_s", "data_time_s", "step_time_s"):
            if name in ev["metrics"]:
                ev["metrics"][name] /= 100.0
    assert "straggler" not in serious(replay(events)[0])
    sensitive = RulesConfig.from_dict({"rules": {"straggler": {"min_extra_s": 0.0}}})
    assert serious(replay(events, sensitive)[0])["straggler"] == 1
