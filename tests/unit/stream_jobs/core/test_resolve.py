"""Alert resolution in the pure core: what fired and stopped holding gets a `resolved` record, same alert_id."""

from __future__ import annotations

from rankstream.dev.synthetic import Fault, generate_run
from rankstream.schema import validate_event
from rankstream.stream_jobs.core import Engine, RulesConfig
from rankstream.stream_jobs.core.resolve import QUIET_STEPS, RESOLVING_RULES
from tests.corekit import replay


def _without_run_end(events: list[dict]) -> list[dict]:
    return [e for e in events if e["kind"] != "run_end"]


def test_a_straggler_that_recovers_is_resolved_once_its_cooldown_passed_quietly() -> None:
    events = generate_run("s", 8, 400, faults=[Fault("straggler", step=60, rank=3, duration=30)], seed=1)
    out = replay(_without_run_end(events))
    fired = [a for a in out.alerts if a["rule"] == "straggler"]
    assert fired and all(a["ranks"] == [3] for a in fired)
    resolved = [r for r in out.resolved if r["rule"] == "straggler"]
    assert {r["alert_id"] for r in resolved} == {a["alert_id"] for a in fired}
    [first] = [r for r in resolved if r["alert_id"] == fired[0]["alert_id"]]
    assert first["state"] == "resolved" and first["ranks"] == [3] and first["step"] == fired[0]["step"]
    cooldown = RulesConfig().rules.straggler.cooldown_steps  # a repeat inside it would have stayed one alert
    assert 89 + cooldown <= first["resolved_step"] <= 90 + cooldown + QUIET_STEPS
    assert "not seen for" in first["evidence"]["why"] and first["message"].startswith("Resolved: straggler")


def test_a_rank_that_comes_back_resolves_rank_silent() -> None:
    events = generate_run("b", 4, 400, seed=2, step_time_s=0.5)
    # rank 1 sends nothing for 200 steps (100 s) in the middle, then comes back
    gap = [e for e in events if not (e["rank"] == 1 and 100 <= e["step"] < 300)]
    out = replay(_without_run_end(gap))
    [silent] = [a for a in out.alerts if a["rule"] == "rank_silent"]
    assert silent["ranks"] == [1]
    [back] = [r for r in out.resolved if r["alert_id"] == silent["alert_id"]]
    assert back["evidence"]["why"] == "the rank(s) are heard from again" and back["resolved_step"] >= 299


def test_the_run_ending_resolves_what_is_still_open() -> None:
    events = generate_run("e", 4, 120, faults=[Fault("straggler", step=80, rank=2, duration=40)], seed=3)
    out = replay(events)  # the straggler lasts to the last step; every rank then sends run_end
    fired = {a["alert_id"] for a in out.alerts if a["rule"] == "straggler"}
    ended = [r for r in out.resolved if r["evidence"]["why"] == "the run ended"]
    assert fired and {r["alert_id"] for r in ended} == fired


def test_event_rules_never_resolve_and_every_resolution_has_a_firing_alert() -> None:
    faults = [Fault("loss_spike", step=100), Fault("plateau", step=250), Fault("nan_grad", step=160)]
    out = replay(generate_run("p", 4, 600, faults=faults, seed=4))
    fired = {a["alert_id"]: a for a in out.alerts}
    assert {a["rule"] for a in out.alerts} >= {"loss_spike", "nonfinite_grad", "loss_plateau"}
    for r in out.resolved:
        assert r["rule"] in RESOLVING_RULES and fired[r["alert_id"]]["rule"] == r["rule"]
    assert not [r for r in out.resolved if r["rule"] in ("loss_plateau", "loss_rising")]
    assert len({r["alert_id"] for r in out.resolved}) == len(out.resolved)  # resolved once


def test_open_alerts_survive_a_worker_restart_in_the_saved_state() -> None:
    events = [validate_event(e) for e in _without_run_end(
        generate_run("w", 8, 400, faults=[Fault("straggler", step=60, rank=5, duration=30)], seed=5)
    )]  # fmt: skip
    cut = next(i for i, e in enumerate(events) if e["kind"] == "step" and e["step"] == 85)
    before = Engine(trust_first_seq=True)
    first = before.process_many(events[:cut])
    assert [a for a in first.alerts if a["rule"] == "straggler"] and not first.resolved
    after = Engine(trust_first_seq=True)
    after.import_state("w", before.export_state("w"))
    rest = after.process_many(events[cut:])
    rest.extend(after.finish())
    ids = {a["alert_id"] for a in first.alerts + rest.alerts if a["rule"] == "straggler"}
    assert {r["alert_id"] for r in rest.resolved if r["rule"] == "straggler"} == ids
