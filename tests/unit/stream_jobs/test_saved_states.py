"""Saved detector states a worker loaded at assignment: handed out once, given up when no event asks."""

from __future__ import annotations

from rankstream.stream_jobs.detector_state import SavedStates

TTL_S = 3600.0


def _saved(now: list[float]) -> SavedStates:
    return SavedStates(TTL_S, clock=lambda: now[0])


def test_a_state_is_handed_out_once() -> None:
    saved = _saved([0.0])
    saved.add([0], {(0, "a"): {"n": 1}})
    assert saved.take(0, "a") == {"n": 1}
    assert saved.take(0, "a") is None and len(saved) == 0


def test_states_no_event_asked_for_within_the_ttl_are_given_up_once() -> None:
    now = [100.0]
    saved = _saved(now)
    saved.add([0, 1], {(0, "taken"): {}, (0, "ended-elsewhere"): {}, (1, "silent"): {}})
    now[0] += 10.0
    saved.add([2], {(2, "later"): {}})  # assigned later: its own clock
    assert saved.take(0, "taken") == {}
    now[0] += TTL_S - 10.0
    assert saved.expired() == {(0, "ended-elsewhere"), (1, "silent")}
    assert saved.expired() == set() and len(saved) == 1
    assert saved.take(1, "silent") is None  # a late first event starts the run afresh
    now[0] += 10.0
    assert saved.expired() == {(2, "later")} and len(saved) == 0


def test_revoked_partitions_are_forgotten_without_tombstones() -> None:
    now = [0.0]
    saved = _saved(now)
    saved.add([0, 1], {(0, "a"): {}, (1, "b"): {}})
    saved.forget([1])
    assert saved.take(1, "b") is None
    now[0] += TTL_S
    assert saved.expired() == {(0, "a")}  # the next owner of partition 1 decides about "b"
