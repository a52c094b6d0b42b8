"""The scenario generator: deterministic, valid wire events, realistic ordering, faults as documented."""

from __future__ import annotations

from collections import defaultdict

import pytest

from rankstream.dev.synthetic import FAULT_KINDS, Fault, expected_rules, generate_run
from rankstream.schema import dumps, validate_event


def test_same_arguments_same_events_and_seed_changes_them() -> None:
    a = generate_run("r", 4, 50, seed=1)
    assert a == generate_run("r", 4, 50, seed=1)
    assert a != generate_run("r", 4, 50, seed=2)


def test_wire_events_are_valid_json_in_arrival_order_with_contiguous_seqs() -> None:
    events = generate_run("r", 4, 120, faults=[Fault("nan_grad", 60)], heartbeat_every_s=5.0)
    for ev in events:
        dumps(ev)  # orjson refuses NaN: non-finite values travel as strings
        validate_event(ev)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    by_rank: dict[int, list[dict]] = defaultdict(list)
    for ev in events:
        by_rank[ev["rank"]].append(ev)
    for rank, evs in by_rank.items():
        assert [e["seq"] for e in evs] == list(range(len(evs))), rank
        assert evs[0]["kind"] == "run_start" and evs[-1]["kind"] == "run_end"
        assert evs[0]["meta"]["team"] == "team-a"
        assert sum(e["kind"] == "step" for e in evs) == 120
        assert any(e["kind"] == "heartbeat" for e in evs)
    assert any(e["metrics"].get("grad_norm") == "nan" for e in events)


def test_step_time_is_the_same_on_every_rank_but_compute_differs_for_a_straggler() -> None:
    events = generate_run("r", 4, 60, faults=[Fault("straggler", 30, rank=2)])
    at = {e["rank"]: e["metrics"] for e in events if e["kind"] == "step" and e["step"] == 40}
    assert len({m["step_time_s"] for m in at.values()}) == 1
    assert at[2]["compute_time_s"] > 1.4 * at[0]["compute_time_s"]


def test_silent_rank_stops_everything_and_has_no_run_end() -> None:
    events = generate_run("r", 3, 100, faults=[Fault("silent", 40, rank=1)])
    r1 = [e for e in events if e["rank"] == 1]
    assert max(e["step"] for e in r1 if e["kind"] == "step") == 39
    assert not any(e["kind"] == "run_end" for e in r1)
    assert max(e["ts"] for e in r1) < max(e["ts"] for e in events if e["rank"] == 0) - 10


def test_hung_rank_keeps_heartbeats_without_steps() -> None:
    events = generate_run("r", 2, 200, faults=[Fault("hung", 50, rank=1)])
    r1 = [e for e in events if e["rank"] == 1]
    last_step_ts = max(e["ts"] for e in r1 if e["kind"] == "step")
    later = [e for e in r1 if e["ts"] > last_step_ts]
    assert later and all(e["kind"] == "heartbeat" and e["step"] == 49 for e in later)


def test_duplicate_delivery_repeats_seqs() -> None:
    events = generate_run("r", 2, 50, faults=[Fault("duplicate_delivery", 10, duration=5)])
    keys = [(e["rank"], e["seq"]) for e in events]
    assert len(keys) - len(set(keys)) == 10


def test_expected_rules_and_validation() -> None:
    assert expected_rules([Fault("nan_loss", 1), Fault("fp16_overflow", 2), Fault("lagging", 3)]) == {
        "nonfinite_loss",
        "rank_lagging",
    }
    assert expected_rules([Fault("duplicate_delivery", 1)]) == set()
    assert len(FAULT_KINDS) == 15
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("meteor", 1)
    with pytest.raises(ValueError, match="outside world_size"):
        generate_run("r", 2, 10, faults=[Fault("silent", 1, rank=5)])


def test_incarnations_are_per_rank_stable_and_optional() -> None:
    plain = generate_run("inc", 3, 20)
    assert all("inc" not in e for e in plain)
    events = generate_run("inc", 3, 20, incarnations=True)
    by_rank = {r: {e["inc"] for e in events if e["rank"] == r} for r in range(3)}
    assert all(len(incs) == 1 for incs in by_rank.values())
    assert len({next(iter(incs)) for incs in by_rank.values()}) == 3
    assert events == generate_run("inc", 3, 20, incarnations=True)
    assert [{k: v for k, v in e.items() if k != "inc"} for e in events] == plain
