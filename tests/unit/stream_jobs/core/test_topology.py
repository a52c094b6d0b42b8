"""Sharded and 3D-parallel runs (issue 15): loss over its owners, peers, exact global gradient norms.

Synthetic scenarios replayed through the pure core: pipeline parallel (only the last stage has a
loss; a first stage slower by design is no straggler, one slow rank inside a stage is), tensor
parallel (a TP group's duplicate losses count once), FSDP LoRA with empty adapter shards, and the
global norm = sqrt(sum over distinct shards) with DP replicas counted once.
"""

from __future__ import annotations

import math
from typing import Any

from rankstream.schema import dumps, encode_metrics, loads, validate_event
from rankstream.stream_jobs.core import Engine

RUN = "topo"


class Run:
    """Builds one run's events: a run_start per rank (with its topology), then steps."""

    def __init__(self, world_size: int, topology: Any = None) -> None:
        self.ws = world_size
        self.seq = [0] * world_size
        self.events: list[dict[str, Any]] = []
        for rank in range(world_size):
            start: dict[str, Any] = {"kind": "run_start", "rank": rank, "step": -1, "ts": 1000.0}
            if topology is not None:
                start["topology"] = topology(rank)
            self._add(start)

    def _add(self, fields: dict[str, Any]) -> None:
        rank = fields["rank"]
        ev = {"v": 1, "run_id": RUN, "world_size": self.ws, "seq": self.seq[rank], "inc": f"i{rank}", **fields}
        self.seq[rank] += 1
        ev["metrics"] = encode_metrics(ev.get("metrics") or {})
        self.events.append(validate_event(loads(dumps(ev))))

    def step(self, step: int, per_rank: dict[int, dict[str, float]]) -> None:
        for rank, metrics in per_rank.items():
            self._add(
                {"kind": "step", "rank": rank, "step": step, "ts": 1001.0 + step + rank * 1e-3, "metrics": metrics}
            )

    def replay(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        engine = Engine()
        out = engine.process_many(self.events)
        out.extend(engine.finish())
        return out.steps, out.alerts


def rules_fired(alerts: list[dict[str, Any]]) -> set[str]:
    return {a["rule"] for a in alerts}


# ------------------------------------------------------------------------ pipeline parallel


def pp_topology(rank: int) -> dict[str, Any]:
    """8 ranks: 2 pipeline stages x 4 data-parallel replicas (stage = rank // 4)."""
    return {"pp": [rank // 4, 2], "dp": [rank % 4, 4], "source": "test"}


def pp_run(slow_rank: int | None, topology: bool = True) -> Run:
    run = Run(8, pp_topology if topology else None)
    for step in range(40):
        per_rank = {}
        for rank in range(8):
            stage = rank // 4
            compute = 1.0 if stage == 0 else 0.4  # stage 0 does more work by design
            if rank == slow_rank:
                compute *= 3.0
            metrics = {"compute_time_s": compute, "data_time_s": 0.01, "step_time_s": 1.0}
            if stage == 1:
                metrics["loss"] = 2.0 + 0.1 * (rank % 4) - 0.001 * step
            per_rank[rank] = metrics
        run.step(step, per_rank)
    return run


def test_pp_only_the_last_stage_owns_the_loss_and_the_other_stages_are_not_missing() -> None:
    steps, _ = pp_run(None).replay()
    assert len(steps) == 40
    for rec in steps:
        assert rec["complete"] and rec["missing_ranks"] == []
        assert rec["loss_owners"] == 4
        loss = rec["metrics"]["loss"]
        assert loss["n"] == 4 and {loss["argmin"], loss["argmax"]} <= {4, 5, 6, 7}
        assert math.isclose(loss["mean"], 2.15 - 0.001 * rec["step"])


def test_pp_a_stage_slower_by_design_is_no_straggler() -> None:
    _, alerts = pp_run(None).replay()
    assert "straggler" not in rules_fired(alerts)
    # Without the layout the whole first stage reads as slow: the test would catch a lost peer grouping.
    _, blind = pp_run(None, topology=False).replay()
    assert {tuple(a["ranks"]) for a in blind if a["rule"] == "straggler"} >= {(0,), (1,), (2,), (3,)}


def test_pp_one_slow_rank_inside_a_stage_is_a_straggler() -> None:
    _, alerts = pp_run(slow_rank=5).replay()
    stragglers = [a for a in alerts if a["rule"] == "straggler"]
    assert stragglers and {tuple(a["ranks"]) for a in stragglers} == {(5,)}
    assert math.isclose(stragglers[0]["evidence"]["median_own_time_s"], 0.41)  # its peers' (stage 1), not the run's


def test_pp_a_non_owner_rank_that_reports_a_loss_is_not_averaged_in() -> None:
    run = Run(4, lambda r: {"pp": [r // 2, 2], "dp": [r % 2, 2]})
    run.step(0, {0: {"loss": 0.0}, 1: {"loss": 0.0}, 2: {"loss": 2.0}, 3: {"loss": 4.0}})
    (rec,), _ = run.replay()
    assert rec["metrics"]["loss"]["mean"] == 3.0 and rec["metrics"]["loss"]["n"] == 2


# -------------------------------------------------------------------------- tensor parallel


def tp_topology(rank: int) -> dict[str, Any]:
    """4 ranks: TP groups of 2 (tp = rank % 2) x 2 data-parallel replicas."""
    return {"tp": [rank % 2, 2], "dp": [rank // 2, 2]}


def test_tp_duplicate_losses_count_once_per_group() -> None:
    run = Run(4, tp_topology)
    run.step(0, {r: {"loss": 2.0 if r < 2 else 3.0} for r in range(4)})
    run.step(1, {0: {"loss": 2.0}, 1: {"loss": 2.0}, 2: {"loss": 3.0}})  # rank 3 missing: partial
    steps, _ = run.replay()
    first, second = steps[:2]
    assert first["metrics"]["loss"]["n"] == 2 and first["metrics"]["loss"]["mean"] == 2.5
    assert first["loss_owners"] == 2
    # Without the layout the partial step over-weights the first group's duplicate: (2 + 2 + 3) / 3.
    assert second["metrics"]["loss"]["mean"] == 2.5 and second["missing_ranks"] == [3]
    blind = Run(4)
    blind.step(1, {0: {"loss": 2.0}, 1: {"loss": 2.0}, 2: {"loss": 3.0}})
    (old,), _ = blind.replay()
    assert math.isclose(old["metrics"]["loss"]["mean"], 7.0 / 3.0)


# --------------------------------------------------------------------- exact global norms


def hsdp_topology(rank: int) -> dict[str, Any]:
    """4 ranks: 2 shards x 2 replicas (HSDP): shard index = rank % 2, ranks 0/2 and 1/3 are replicas."""
    return {"dp": [rank, 4], "shard": [rank % 2, 2], "grads": "shard", "source": "test"}


def test_global_norm_sums_distinct_shards_and_counts_replicas_once() -> None:
    run = Run(4, hsdp_topology)
    sq = {0: 4.0, 1: 5.0, 2: 4.0, 3: 5.0}
    run.step(0, {r: {"grad_sq": sq[r], "grad_norm": math.sqrt(sq[r])} for r in range(4)})
    (rec,), _ = run.replay()
    g = rec["metrics"]["grad_norm"]
    assert g["mean"] == g["min"] == g["max"] == 3.0  # sqrt(4 + 5), not sqrt(18) and not mean(2, sqrt 5)
    assert (g["n"], g["std"], g["argmin"], g["argmax"]) == (2, 0.0, 0, 1)
    shard = rec["metrics"]["grad_norm_shard"]  # the per-rank values as sent
    assert shard["n"] == 4 and math.isclose(shard["mean"], (2.0 + math.sqrt(5.0)) / 2)
    assert rec["grad_parts"] == {"expected": 2, "present": 2, "exact": True}


def test_a_step_missing_a_whole_shard_has_no_global_norm() -> None:
    run = Run(4, hsdp_topology)
    run.step(0, {0: {"grad_sq": 4.0}, 2: {"grad_sq": 4.0}})  # shard 1 (ranks 1 and 3) missing
    run.step(1, {0: {"grad_sq": 4.0}, 3: {"grad_sq": 5.0}})  # one replica of each shard: exact
    steps, _ = run.replay()
    first = next(s for s in steps if s["step"] == 0)
    second = next(s for s in steps if s["step"] == 1)
    assert "grad_norm" not in first["metrics"] and first["grad_parts"]["exact"] is False
    assert second["metrics"]["grad_norm"]["mean"] == 3.0 and second["grad_parts"]["exact"] is True


def test_a_nonfinite_part_makes_the_global_norm_nonfinite() -> None:
    run = Run(2, lambda r: {"shard": [r, 2]})
    run.step(0, {0: {"grad_sq": math.inf, "grad_norm": math.inf}, 1: {"grad_sq": 1.0, "grad_norm": 1.0}})
    (rec,), alerts = run.replay()
    assert "grad_norm" not in rec["metrics"] and rec["nonfinite"]["grad_norm"] == 1
    assert "nonfinite_grad" in rules_fired(alerts)


def test_runs_without_topology_keep_todays_aggregation() -> None:
    run = Run(2)
    run.step(0, {0: {"grad_sq": 4.0, "grad_norm": 2.0, "loss": 1.0}, 1: {"grad_sq": 9.0, "grad_norm": 3.0}})
    (rec,), _ = run.replay()
    assert rec["metrics"]["grad_norm"]["mean"] == 2.5 and "grad_norm_shard" not in rec["metrics"]
    assert "loss_owners" not in rec and "grad_parts" not in rec


# ----------------------------------------------------------------- FSDP LoRA, empty shards


def fsdp_topology(rank: int) -> dict[str, Any]:
    return {"dp": [rank, 4], "shard": [rank, 4], "grads": "shard", "source": "test"}


def lora_run(adapter_sq: float) -> Run:
    """A rank-2 LoRA matrix under FSDP2 over 4 ranks: only ranks 0 and 1 hold adapter rows."""
    run = Run(4, fsdp_topology)
    for step in range(60):
        per_rank = {}
        for rank in range(4):
            part = adapter_sq * (1.0 + 0.01 * step) if rank < 2 else 0.0
            per_rank[rank] = {
                "grad_sq_adapter": part,
                "grad_sq": part,
                "grad_norm_adapter": math.sqrt(part),
                "grad_norm_backbone": 0.0,
                "loss": 2.0,
            }
        run.step(step, per_rank)
    return run


def test_fsdp_lora_with_empty_adapter_shards_is_no_adapter_alert() -> None:
    steps, alerts = lora_run(adapter_sq=0.02).replay()
    assert "adapter_grad_vanishing" not in rules_fired(alerts)
    rec = steps[10]
    exact = math.sqrt(2 * 0.02 * 1.1)
    assert math.isclose(rec["metrics"]["grad_norm_adapter"]["mean"], exact, rel_tol=1e-12)
    shard = rec["metrics"]["grad_norm_adapter_shard"]
    assert shard["n"] == 2 and shard["min"] > 0  # empty shards are no reading of the adapter


def test_fsdp_lora_whose_adapters_get_no_gradient_fires_adapter_grad_vanishing() -> None:
    steps, alerts = lora_run(adapter_sq=0.0).replay()
    assert "adapter_grad_vanishing" in rules_fired(alerts)
    assert steps[10]["metrics"]["grad_norm_adapter"]["mean"] == 0.0


# ------------------------------------------------------------------------ state and attempts


def test_a_restarted_worker_keeps_the_runs_topology() -> None:
    run = Run(4, tp_topology)
    for step in range(20):
        run.step(step, {r: {"loss": 2.0 if r < 2 else 3.0, "grad_norm": 1.0} for r in range(4)})
    cut = len(run.events) - 4 * 10
    first = Engine()
    first.process_many(run.events[:cut])
    state = loads(dumps(first.export_state(RUN)))
    assert state["aligner"]["topology"]["3"]["tp"] == [1, 2]
    second = Engine()
    second.import_state(RUN, state)
    out = second.process_many(run.events[cut:])
    out.extend(second.finish())
    assert out.steps and all(s["metrics"]["loss"]["n"] == 2 and s["loss_owners"] == 2 for s in out.steps)


def test_a_new_attempt_may_change_the_layout() -> None:
    run = Run(4, tp_topology)
    run.step(0, {r: {"loss": 1.0} for r in range(4)})
    for rank in range(4):  # relaunched without tensor parallelism: every rank owns its loss
        run._add({"kind": "run_start", "rank": rank, "step": -1, "ts": 1001.5, "topology": {"dp": [rank, 4]}})
    run.step(1, {r: {"loss": 1.0} for r in range(4)})
    steps, _ = run.replay()
    assert [s["metrics"]["loss"]["n"] for s in steps] == [2, 4]
    assert [s["loss_owners"] for s in steps] == [2, 4]


def test_late_events_that_complete_a_step_revise_it_with_the_global_norm() -> None:
    run = Run(4, hsdp_topology)
    sq = {0: 4.0, 1: 5.0, 2: 4.0, 3: 5.0}
    for step in range(40):  # 40 s of event time: step 0 is released (grace 30 s) before its late half
        run.step(step, {r: {"grad_sq": sq[r]} for r in range(4)})
    late = [e for e in run.events if e["kind"] == "step" and e["step"] == 0 and e["rank"] in (1, 3)]
    run.events = [e for e in run.events if not any(e is x for x in late)] + late  # shard 1 of step 0 comes last
    steps, _ = run.replay()
    first = [s for s in steps if s["step"] == 0]
    assert "grad_norm" not in first[0]["metrics"] and first[0]["grad_parts"]["exact"] is False
    revised = first[-1]
    assert revised.get("revision", 0) >= 1 and revised["metrics"]["grad_norm"]["mean"] == 3.0
    assert revised["grad_parts"] == {"expected": 2, "present": 2, "exact": True}
