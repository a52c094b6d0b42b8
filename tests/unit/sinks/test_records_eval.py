"""An evaluation's aggregate (``phase: "eval"`` on the steps topic) becomes eval_* step_metrics rows only."""

from __future__ import annotations

from rankstream.sinks.records import Batch, validate_step
from rankstream.sinks.store.tables import column_names


def agg(mean: float) -> dict[str, float | int]:
    return {"mean": mean, "min": mean, "max": mean, "std": 0.0, "argmin": 0, "argmax": 1, "n": 2}


def record(**extra: object) -> dict:
    base = {"v": 1, "run_id": "r", "step": 500, "world_size": 2, "ranks_reported": 2, "missing_ranks": []}
    base.update(complete=True, ts_first=1.0, ts_last=2.0, restart=1)
    return validate_step({**base, **extra})


def test_eval_aggregates_are_eval_metrics_beside_the_train_step() -> None:
    batch = Batch()
    batch.add_step(record(metrics={"loss": agg(2.0)}), "t")
    batch.add_step(record(phase="eval", metrics={"eval_loss": agg(2.5), "val_acc": agg(0.7)}), "t")  # HF / Lightning
    batch.add_step(record(phase="eval", step=600, metrics={"loss": agg(2.6)}), "t")  # a plain log_eval(loss=)
    assert batch.count("steps") == 1, "the steps row stays the train step's"
    cols = dict(zip(column_names("step_metrics"), batch.columns["step_metrics"], strict=True))
    rows = sorted(zip(cols["metric"], cols["step"], cols["attempt"], cols["mean"], cols["n"], strict=True))
    assert rows == [
        ("eval_loss", 500, 1, 2.5, 2),
        ("eval_loss", 600, 1, 2.6, 2),  # a plain "loss" of an eval event cannot replace a train loss
        ("eval_val_acc", 500, 1, 0.7, 2),
        ("loss", 500, 1, 2.0, 2),
    ]
