"""The stream job's bookkeeping, without Kafka: what may be acked when, DLQ, resume."""

from __future__ import annotations

from rankstream.dev.synthetic import Fault, generate_run
from rankstream.schema import dumps, validate_event
from rankstream.stream_jobs.core import Engine
from rankstream.stream_jobs.pipeline import PartitionedPipeline, SimpleMessage
from rankstream.topics import SINK_ONLY_HEADER


def _items(events: list[dict], partition: int = 0, start: int = 0) -> list[SimpleMessage]:
    return [SimpleMessage(partition, start + i, e["run_id"].encode(), dumps(e)) for i, e in enumerate(events)]


def _offsets(acks: list[tuple[int, int]], partition: int = 0) -> list[int]:
    assert {p for p, _ in acks} <= {partition}
    return sorted(offset for _, offset in acks)


def _step_events(events: list[dict], step: int) -> list[dict]:
    return [e for e in events if e["kind"] == "step" and e["step"] == step]


def test_step_events_are_held_until_their_step_is_released() -> None:
    events = generate_run("r", world_size=4, steps=3, seed=1)
    step0 = [i for i, e in enumerate(events) if e["kind"] == "step" and e["step"] == 0]
    cut = step0[-1]  # everything before the last rank's step-0 event
    pipeline = PartitionedPipeline()
    before = pipeline.process(_items(events[:cut]))
    assert before.steps == []
    assert _offsets(before.ackable) == [i for i in range(cut) if i not in step0]  # non-step events: at once
    assert pipeline.held_count() == 3
    last = pipeline.process(_items(events[cut : cut + 1], start=cut))
    assert [s["step"] for s in last.steps] == [0]
    assert _offsets(last.ackable) == step0
    assert pipeline.held_count() == 0
    assert (0, "r") in last.state  # detector state saved per (partition, run)


def test_late_duplicate_of_a_released_step_is_acked_at_once() -> None:
    events = generate_run("r", world_size=2, steps=2, seed=2)
    pipeline = PartitionedPipeline()
    pipeline.process(_items(events))
    again = pipeline.process(_items(_step_events(events, 0), start=500))
    assert _offsets(again.ackable) == [500, 501] and again.steps == []


def test_invalid_messages_go_to_dlq_and_are_acked() -> None:
    pipeline = PartitionedPipeline(source_topic="p.events")
    result = pipeline.process([SimpleMessage(2, 7, b"k", b"{oops")])
    assert result.ackable == [(2, 7)]
    assert len(result.dlq) == 1 and b"not valid JSON" in result.dlq[0][1] and result.dlq[0][0] == b"k"
    assert pipeline.stats["invalid"] == 1


def test_wall_clock_fallback_releases_a_step_nobody_completes() -> None:
    now = [1000.0]
    events = generate_run("r", world_size=4, steps=40, seed=3)
    cut = [e for e in events if not (e["kind"] == "step" and e["step"] >= 30 and e["rank"] == 3)]
    cut = [e for e in cut if e["kind"] != "run_end" and not (e["kind"] == "heartbeat" and e["step"] >= 29)]
    pipeline = PartitionedPipeline(wall_clock=lambda: now[0])
    first = pipeline.process(_items(cut))
    released = {s["step"] for s in first.steps}
    assert 39 not in released and pipeline.held_count() > 0
    now[0] += 3600.0  # an hour of silence: every pending step must go out as partial
    later = pipeline.advance()
    assert {s["step"] for s in later.steps} >= set(range(30, 40)) - released
    assert all(not s["complete"] and s["missing_ranks"] == [3] for s in later.steps)
    assert pipeline.held_count() == 0


def test_resume_with_saved_state_detects_what_needs_the_earlier_window() -> None:
    events = generate_run("r", world_size=8, steps=300, faults=[Fault("loss_spike", step=160)], seed=0)
    first = [e for e in events if e["kind"] == "run_start" or 0 <= e["step"] < 150]
    second = [e for e in events if e not in first]
    before = PartitionedPipeline()
    saved = before.process(_items(first)).state
    resumed = PartitionedPipeline(state_lookup=lambda p, run_id: saved.get((p, run_id)))
    out = resumed.process(_items(second, start=len(first)))
    assert {s["step"] for s in out.steps} == set(range(150, 300))
    assert [a["rule"] for a in out.alerts if a["state"] == "firing"] == ["loss_spike"]
    cold = PartitionedPipeline().process(_items(second, start=len(first)))
    assert cold.alerts == []  # without the saved window the spike is invisible: the state matters


def test_trust_first_seq_only_in_the_stream_engine() -> None:
    events = [validate_event(e) for e in generate_run("r", world_size=2, steps=20, seed=4)]
    tail = [e for e in events if e["kind"] == "step" and e["step"] >= 10]
    strict, resuming = Engine(), Engine(trust_first_seq=True)
    assert len(resuming.process_many(tail).steps) == 10
    assert len(strict.process_many(tail).steps) < 10  # replay waits for the earlier seqs


def test_revoked_partition_is_forgotten() -> None:
    events = generate_run("r", world_size=2, steps=2, seed=5)
    pipeline = PartitionedPipeline()
    pipeline.process(_items(_step_events(events, 0)[:1], partition=1))
    assert pipeline.held_count() == 1
    pipeline.revoke([1])
    assert pipeline.held_count() == 0


def test_events_of_steps_the_previous_owner_released_are_not_held() -> None:
    """After a takeover the log is re-read from the committed offset, which can lie before
    steps the previous owner already released; its saved state says so, and those events
    must be acked, not held forever."""
    events = generate_run("r", world_size=4, steps=200, seed=6)
    first = [e for e in events if e["kind"] == "run_start" or 0 <= e["step"] < 150]
    before = PartitionedPipeline()
    saved = before.process(_items(first)).state
    reread = [e for e in first if e["kind"] == "step" and e["step"] >= 140]
    taker = PartitionedPipeline(state_lookup=lambda p, run_id: saved.get((p, run_id)))
    out = taker.process(_items(reread, start=10_000))
    assert out.steps == []  # already downstream
    assert _offsets(out.ackable) == list(range(10_000, 10_000 + len(reread)))
    assert taker.held_count() == 0
    # they are duplicates of what the previous owner handled, not late arrivals: a rank whose
    # events keep arriving after their step closed is what rank_lagging reports
    assert out.alerts == []
    assert taker.engine_stats()["late_events"] == 0
    assert taker.engine_stats()["duplicates"] == len(reread)


def test_takeover_after_committed_heartbeats_still_aligns_at_once() -> None:
    """Heartbeats sent after a rank's last released step but before the first held event are
    committed and never re-read: the new owner must not wait for their seqs to release steps."""
    events = generate_run("r", world_size=4, steps=60, seed=8, heartbeat_every_s=0.2)
    first_held = next(i for i, e in enumerate(events) if e["kind"] == "step" and e["step"] >= 30)
    before = PartitionedPipeline()
    saved = before.process(_items(events[:first_held])).state
    last_released_seq = {e["rank"]: e["seq"] for e in events[:first_held] if e["kind"] == "step"}
    assert any(e["kind"] == "heartbeat" and e["seq"] > last_released_seq[e["rank"]] for e in events[:first_held]), (
        "the scenario needs a committed heartbeat above a rank's released seqs"
    )
    taker = PartitionedPipeline(state_lookup=lambda p, run_id: saved.get((p, run_id)))
    out = taker.process(_items(events[first_held:], start=5_000))
    assert [s["step"] for s in out.steps] == list(range(30, 60))
    assert all(s["complete"] for s in out.steps)
    assert taker.engine_stats()["late_events"] == 0


def test_events_redriven_for_the_sink_alone_are_acked_and_not_aligned_again() -> None:
    """``rankstream dlq --redrive`` re-sends events the store refused; the worker aligned them long ago."""
    events = generate_run("r", world_size=2, steps=3, seed=4)
    marked = [
        SimpleMessage(0, i, e["run_id"].encode(), dumps(e), headers=[(SINK_ONLY_HEADER, b"1")])
        for i, e in enumerate(events)
    ]
    pipeline = PartitionedPipeline()
    result = pipeline.process(marked)
    assert result.steps == [] and result.alerts == [] and result.dlq == []
    assert _offsets(result.ackable) == list(range(len(events)))
    assert pipeline.stats["sink_only"] == len(events) and pipeline.stats["events"] == 0
    assert pipeline.held_count() == 0
    plain = pipeline.process(_items(events, start=len(events)))  # the same events unmarked are aligned as usual
    assert [s["step"] for s in plain.steps] == [0, 1, 2]
