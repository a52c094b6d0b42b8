"""eval_loss_rising (overfitting), and the eval aggregates that go out with the aligned steps."""

from __future__ import annotations

from typing import Any

from rankstream.dev.synthetic import Fault, generate_run
from rankstream.schema import dumps, loads, validate_event
from rankstream.stream_jobs.core import Engine, Output
from tests.corekit import replay, reseq

WORLD = 2


def with_evals(events: list[dict], eval_losses: dict[int, float]) -> list[dict]:
    """Every rank sends an ``eval`` event right after its step event of each step in ``eval_losses``."""
    out: list[dict] = []
    for e in events:
        out.append(e)
        if e["kind"] == "step" and e["step"] in eval_losses:
            metrics = {"eval_loss": eval_losses[e["step"]] + 0.001 * e["rank"], "eval_runtime": 3.0}
            out.append({**e, "kind": "eval", "ts": e["ts"] + 0.01, "metrics": metrics, "tags": {}})
    return reseq(out)


def firing(out: Output, rule: str) -> list[dict[str, Any]]:
    """The alerts of ``rule`` that fired (not the messages that resolve them)."""
    return [a for a in out.alerts if a["rule"] == rule and a.get("state", "firing") == "firing"]


def evals_of(out: Output) -> list[dict[str, Any]]:
    return [s for s in out.steps if s.get("phase") == "eval"]


def test_eval_aggregates_go_out_with_the_steps_after_their_train_step() -> None:
    losses = {s: 2.0 - 0.001 * s for s in range(100, 600, 100)}
    out = replay(with_evals(generate_run("ev", WORLD, 600, seed=1), losses))
    evals = evals_of(out)
    assert [e["step"] for e in evals] == sorted(losses)
    for e in evals:
        assert e["complete"] and e["ranks_reported"] == WORLD and e["missing_ranks"] == []
        assert e["metrics"]["eval_loss"]["n"] == WORLD
        assert abs(e["metrics"]["eval_loss"]["mean"] - (losses[e["step"]] + 0.0005)) < 1e-9
        train = [i for i, s in enumerate(out.steps) if s.get("phase") is None and s["step"] == e["step"]]
        assert train and train[0] < out.steps.index(e), "an evaluation goes out after its train step"
    assert len([s for s in out.steps if s.get("phase") is None]) == 600, "train steps unchanged"
    assert "eval_loss_rising" not in {a["rule"] for a in out.alerts}


def test_overfitting_is_eval_loss_rising_at_any_eval_cadence() -> None:
    for every in (50, 100):
        steps = range(every, 1000, every)
        # falls until step 500, then rises 2% per evaluation while the train loss keeps falling
        losses = {s: 2.0 - 0.001 * min(s, 500) + (0.04 * (s - 500) / every if s > 500 else 0.0) for s in steps}
        out = replay(with_evals(generate_run("fit", WORLD, 1000, seed=2), losses))
        fired = firing(out, "eval_loss_rising")
        assert fired, every
        first = fired[0]
        assert first["step"] == 500 + 3 * every, "three rises after the best evaluation"
        assert first["severity"] == "warning" and first["evidence"]["eval_steps"][0] == 500
        assert first["evidence"]["train_loss"] < first["evidence"]["train_loss_first"]
        assert "overfitting" in first["message"]


def test_eval_loss_rising_with_the_train_loss_rising_too_is_not_overfitting() -> None:
    losses = {s: 2.0 + 0.05 * s / 100 for s in range(100, 1000, 100)}
    events = with_evals(
        generate_run("div", WORLD, 1000, seed=3, faults=[Fault("loss_rising", 100, duration=800, magnitude=3.0)]),
        losses,
    )
    out = replay(events)
    assert "eval_loss_rising" not in {a["rule"] for a in out.alerts}


def test_pending_evaluations_survive_a_worker_restart() -> None:
    """The run's state taken over mid-run (a worker restart) while an evaluation is pending gives the same
    eval records and alerts as one uninterrupted replay."""
    steps = range(100, 1000, 100)
    losses = {s: 2.0 - 0.001 * min(s, 500) + (0.04 * (s - 500) / 100 if s > 500 else 0.0) for s in steps}
    events = [validate_event(e) for e in with_evals(generate_run("st", WORLD, 1000, seed=4), losses)]
    whole = Engine()
    want = whole.process_many(events)
    want.extend(whole.finish())
    cut = next(i for i, e in enumerate(events) if e["kind"] == "eval" and e["step"] == 700) + 1
    first = Engine()
    got = first.process_many(events[:cut])
    assert first.export_state("st")["evals"]["pending"], "the eval of step 700 is pending at the cut"
    second = Engine()
    second.import_state("st", loads(dumps(first.export_state("st"))))  # as JSON, like the worker's state store
    got.extend(second.process_many(events[cut:]))
    got.extend(second.finish())
    assert evals_of(got) == evals_of(want) and len(evals_of(want)) == len(steps)
    assert [a["step"] for a in firing(got, "eval_loss_rising")] == [a["step"] for a in firing(want, "eval_loss_rising")]
    assert firing(want, "eval_loss_rising")
