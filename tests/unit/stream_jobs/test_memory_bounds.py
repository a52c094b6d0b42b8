"""Flat worker memory: nothing kept per run outlives the run's eviction (issue 11 item 2)."""

from __future__ import annotations

from rankstream.dev.synthetic import generate_run
from rankstream.schema import dumps, validate_event
from rankstream.stream_jobs.core import Engine, RulesConfig
from rankstream.stream_jobs.core.params import AlignmentParams
from rankstream.stream_jobs.pipeline import PartitionedPipeline, SimpleMessage

#: Past an ended run's grace (30 s by default) and the engine's sweep period (60 s of arrival time).
PAST_EVICTION_S = 61.0


class Offsets:
    """Consecutive offsets per partition, as a consumer would see them."""

    def __init__(self) -> None:
        self.next = 0

    def items(self, events: list[dict], partition: int = 0) -> list[SimpleMessage]:
        start, self.next = self.next, self.next + len(events)
        return [SimpleMessage(partition, start + i, e["run_id"].encode(), dumps(e)) for i, e in enumerate(events)]


def _per_run_entries(pipeline: PartitionedPipeline, run_id: str) -> list[str]:
    """Where ``pipeline`` still keeps something for ``run_id`` (white-box: its partitions' bookkeeping)."""
    found = []
    for partition, ps in pipeline._partitions.items():
        if run_id in ps.released:
            found.append(f"released[{partition}]")
        if run_id in ps.held:
            found.append(f"held[{partition}]")
        if ps.engine.has_run(run_id):
            found.append(f"engine[{partition}]")
    return found


def _ended_run_missing_last_step_of_rank(run_id: str, rank: int, steps: int = 5) -> list[dict]:
    events = generate_run(run_id, world_size=4, steps=steps, seed=1)
    return [e for e in events if not (e["kind"] == "step" and e["step"] == steps - 1 and e["rank"] == rank)]


def test_an_evicted_run_leaves_nothing_behind_and_gets_a_tombstone() -> None:
    now = [1000.0]
    pipeline = PartitionedPipeline(wall_clock=lambda: now[0])
    offsets = Offsets()
    events = _ended_run_missing_last_step_of_rank("a", rank=2)
    first = pipeline.process(offsets.items(events))
    assert pipeline.held_count() == 3  # the last step waits for rank 2
    assert (0, "a") in first.state and not first.evicted
    now[0] += PAST_EVICTION_S
    later = pipeline.process(offsets.items(generate_run("b", world_size=2, steps=2, seed=2)[:1]))
    assert later.evicted == {(0, "a")}  # swept while processing another run's event
    assert (0, "a") not in later.state
    assert [(s["run_id"], s["step"], s["complete"]) for s in later.steps] == [("a", 4, False)]
    assert pipeline.held_count() == 0
    assert _per_run_entries(pipeline, "a") == []
    acked = {o for _, o in first.ackable} | {o for _, o in later.ackable}
    assert acked >= set(range(len(events)))  # the held ones with the eviction's outputs
    assert pipeline.stats["forced_acks"] == 0


def test_held_messages_of_a_run_evicted_for_silence_are_acked_at_eviction_not_after_max_hold() -> None:
    now = [1000.0]
    retention = AlignmentParams().retention_s
    pipeline = PartitionedPipeline(wall_clock=lambda: now[0], max_hold_s=10 * retention)
    offsets = Offsets()
    events = _ended_run_missing_last_step_of_rank("quiet", rank=1)
    events = [e for e in events if e["kind"] != "run_end"]  # never ends: evicted when silent for the retention
    held_steps = {i for i, e in enumerate(events) if e["kind"] == "step" and e["step"] == 4}
    first = pipeline.process(offsets.items(events))
    assert held_steps.isdisjoint(o for _, o in first.ackable)
    acked: set[int] = set()
    evicted: set[tuple[int, str]] = set()
    for _ in range(3):  # the wall-clock fallback: the run's steps go out, then it is evicted
        now[0] += retention / 2 + 1
        out = pipeline.advance()
        acked |= {o for _, o in out.ackable}
        evicted |= out.evicted
    assert evicted == {(0, "quiet")}
    assert held_steps <= acked
    assert pipeline.stats["forced_acks"] == 0 and pipeline.held_count() == 0
    assert _per_run_entries(pipeline, "quiet") == []


def test_stragglers_of_an_evicted_run_are_acked_and_do_not_bring_it_back() -> None:
    now = [1000.0]
    events = generate_run("a", world_size=2, steps=4, seed=3)
    saved: dict[tuple[int, str], dict] = {}
    lookups: list[str] = []

    def lookup(partition: int, run_id: str) -> dict | None:
        lookups.append(run_id)
        return saved.get((partition, run_id))

    pipeline = PartitionedPipeline(wall_clock=lambda: now[0], state_lookup=lookup)
    offsets = Offsets()
    saved.update(pipeline.process(offsets.items(events)).state)  # a stale state stays "saved"
    now[0] += PAST_EVICTION_S
    assert pipeline.advance().evicted == {(0, "a")}
    late = [e for e in events if e["kind"] == "step" and e["step"] == 3]
    out = pipeline.process(offsets.items(late))
    assert sorted(o for _, o in out.ackable) == list(range(len(events), len(events) + len(late)))
    assert out.steps == [] and out.state == {} and out.evicted == set()
    assert pipeline.engine_stats()["after_eviction"] == len(late)
    assert lookups == ["a"]  # the stale saved state is not imported again
    assert _per_run_entries(pipeline, "a") == []


def test_a_run_relaunched_after_eviction_saves_state_again_without_a_tombstone() -> None:
    now = [1000.0]
    pipeline = PartitionedPipeline(wall_clock=lambda: now[0])
    offsets = Offsets()
    pipeline.process(offsets.items(generate_run("a", world_size=2, steps=3, seed=4, incarnations=True)))
    now[0] += PAST_EVICTION_S
    assert pipeline.advance().evicted == {(0, "a")}
    relaunch = generate_run("a", world_size=2, steps=3, seed=5, start_ts=1.8e9, incarnations=True)  # new incs
    out = pipeline.process(offsets.items(relaunch))
    assert (0, "a") in out.state and out.evicted == set()
    assert [(s["step"], s.get("restart", 0)) for s in out.steps] == [(0, 1), (1, 1), (2, 1)]


def test_memory_per_partition_is_flat_over_many_runs() -> None:
    """Hundreds of runs, one after another, each ending: after the last eviction the pipeline keeps
    nothing per run, and the rules cache (shared by every run) holds one entry per override set."""
    rules = RulesConfig.from_dict(
        {"overrides": [{"match": {"run_name": "*-7"}, "rules": {"loss_spike": {"sigma": 9}}}]}
    )
    now = [1000.0]
    pipeline = PartitionedPipeline(rules, wall_clock=lambda: now[0])
    offsets = Offsets()
    tombstones: set[tuple[int, str]] = set()
    run_ids = [f"run-{i}" for i in range(300)]
    for i, run_id in enumerate(run_ids):
        partition = i % 3
        tombstones |= pipeline.process(offsets.items(generate_run(run_id, 2, 3, seed=i), partition)).evicted
        now[0] += 1.0
    now[0] += PAST_EVICTION_S
    tombstones |= pipeline.advance().evicted
    assert tombstones == {(i % 3, run_id) for i, run_id in enumerate(run_ids)}
    for ps in pipeline._partitions.values():
        assert ps.released == {} and ps.held == {} and ps.engine.run_ids() == []
        assert ps.engine.evicted == []
    assert len(rules._cache) <= 2  # no override matched / the one override matched


def test_rules_resolved_per_matching_override_set_not_per_run() -> None:
    rules = RulesConfig.from_dict(
        {"overrides": [{"match": {"team": "vision-*"}, "rules": {"loss_spike": {"sigma": 9}}}]}
    )
    names = [(team, f"name-{i}") for i in range(50) for team in ("vision-a", "nlp")]
    resolved = {key: rules.resolve(*key) for key in names}
    assert len(rules._cache) == 2
    assert {resolved[("vision-a", f"name-{i}")].rules.loss_spike.sigma for i in range(50)} == {9.0}
    assert {resolved[("nlp", f"name-{i}")].rules.loss_spike.sigma for i in range(50)} == {
        RulesConfig().rules.loss_spike.sigma
    }
    assert resolved[("nlp", "name-1")] is resolved[("nlp", "name-2")]  # identical: runs skip re-applying rules


def test_an_engine_lists_evictions_only_when_asked() -> None:
    events = [validate_event(e) for e in generate_run("a", world_size=2, steps=2, seed=6)]
    for report, expected in ((False, []), (True, ["a"])):
        engine = Engine(report_evictions=report)
        engine.process_many(events)
        engine.finish()  # ended runs are evicted
        assert engine.evicted == expected and not engine.has_run("a") and engine.was_evicted("a")
        assert engine.take_evicted() == expected and engine.evicted == []
