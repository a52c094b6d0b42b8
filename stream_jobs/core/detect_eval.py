"""Evaluations: ``eval`` events aggregated across ranks per step, and eval_loss_rising (overfitting).

An evaluation's aggregate goes out with the aligned steps, marked ``phase: "eval"``
(same shape as an aligned step), once the train step it belongs to is out: when
every rank reported it at or after that step's release, or when a later train
step is released (each rank sends its eval event before its next step event, and
a step is released only when every earlier seq of its ranks is in), or when the
run is flushed. Evaluations are counted, not steps: the rule reads the last
``evals`` + 1 of them whatever the logging or evaluation cadence.
"""

from __future__ import annotations

from collections import deque
from itertools import pairwise
from typing import Any

from rankstream.schema import encode_metric
from rankstream.stream_jobs.core.aggregate import aggregate
from rankstream.stream_jobs.core.alerts import Finding, StepContext, fmt
from rankstream.stream_jobs.core.align import Aligner
from rankstream.stream_jobs.core.params import RuleSet

#: Eval metric read as the eval loss, first found first: HF / ms-swift, Lightning, a plain ``log_eval(loss=)``.
EVAL_LOSS_NAMES = ("eval_loss", "val_loss", "loss")
#: Eval steps kept pending per run; beyond it the oldest is released.
MAX_PENDING_EVALS = 64


def eval_loss(metrics: dict[str, dict[str, Any]]) -> float | None:
    for name in EVAL_LOSS_NAMES:
        summary = metrics.get(name)
        if summary is not None:
            return float(summary["mean"])
    return None


class EvalTracker:
    """A run's pending evaluations and the eval_loss_rising rule over the released ones."""

    def __init__(self, run_id: str, rules: RuleSet) -> None:
        self.run_id = run_id
        self.rules = rules
        #: step -> rank -> (ts, metrics) of the eval events not released yet.
        self.pending: dict[int, dict[int, tuple[float, dict[str, float]]]] = {}
        #: (step, eval loss, train loss EWMA) of the latest released evaluations.
        self.history: deque[tuple[int, float, float | None]] = deque(maxlen=rules.eval_loss_rising.evals + 1)

    def add(self, ev: dict[str, Any]) -> None:
        ranks = self.pending.setdefault(ev["step"], {})
        ranks[ev["rank"]] = (ev["ts"], ev["metrics"])
        if len(self.pending) > MAX_PENDING_EVALS:
            del self.pending[min(self.pending)]

    def release(
        self,
        aligner: Aligner,
        steps: list[dict],
        *,
        train_loss: float | None,
        label: str,
        force: bool = False,
    ) -> list[Finding]:
        """Append the evaluations that are due to ``steps``; the findings of eval_loss_rising on them."""
        found: list[Finding] = []
        done = aligner.last_released
        for step in sorted(self.pending):
            ranks = self.pending[step]
            complete = len(ranks) >= aligner.world_size and step <= done
            if not (force or complete or step < done):
                break
            del self.pending[step]
            record = self._record(step, ranks, aligner)
            steps.append(record)
            self._score(record, train_loss, label, found)
        return found

    def _record(self, step: int, ranks: dict[int, tuple[float, dict[str, float]]], aligner: Aligner) -> dict[str, Any]:
        order = sorted(ranks)
        per_rank = [ranks[r][1] for r in order]
        summaries, nonfinite = aggregate(order, per_rank)
        ts = [ranks[r][0] for r in order]
        world = aligner.world_size
        return {
            "v": 1,
            "run_id": self.run_id,
            "step": step,
            "phase": "eval",
            "restart": aligner.restart,
            "world_size": world,
            "ranks_reported": len(order),
            "missing_ranks": [r for r in range(world) if r not in ranks] if len(order) < world else [],
            "complete": len(order) >= world,
            "ts_first": min(ts),
            "ts_last": max(ts),
            "metrics": summaries,
            "nonfinite": nonfinite,
        }

    def _score(self, record: dict[str, Any], train_loss: float | None, label: str, found: list[Finding]) -> None:
        """eval_loss_rising: the eval loss rose at each of the last ``evals`` evaluations, by ``min_rel_rise``
        in all, while the train loss fell over the same steps: the model is overfitting."""
        p = self.rules.eval_loss_rising
        loss = eval_loss(record["metrics"])
        if loss is None:
            return
        hist = self.history
        if hist.maxlen != p.evals + 1:
            hist = self.history = deque(hist, maxlen=p.evals + 1)
        if hist and hist[-1][0] >= record["step"]:
            hist.clear()  # a resumed attempt evaluates the same steps again: start over
        hist.append((record["step"], loss, train_loss))
        if len(hist) <= p.evals or not p.enabled:
            return
        values = [h[1] for h in hist]
        if any(b <= a for a, b in pairwise(values)):
            return
        first_step, first_loss, first_train = hist[0]
        rise = (loss - first_loss) / abs(first_loss) if first_loss else 0.0
        if rise < p.min_rel_rise or first_train is None or train_loss is None or train_loss >= first_train:
            return
        at = StepContext(record["step"], record["ts_last"], False, label)
        found.append(
            at.finding(
                "eval_loss_rising",
                p.severity,
                message=f"Eval loss of {label} rose at each of its last {p.evals} evaluations (steps {first_step}-"
                f"{record['step']}: {fmt(first_loss)} -> {fmt(loss)}, +{fmt(rise * 100)}%) while the train loss fell "
                f"({fmt(first_train)} -> {fmt(train_loss)}): the model is overfitting, keep the checkpoint with the "
                "best eval loss and stop, or add regularisation or data.",
                evidence={
                    "evals": len(hist),
                    "eval_losses": values,
                    "eval_steps": [h[0] for h in hist],
                    "rise_rel": rise,
                    "train_loss_first": first_train,
                    "train_loss": train_loss,
                },
            )
        )
        hist.clear()
        hist.append((record["step"], loss, train_loss))  # the next alert needs `evals` new rises

    def to_state(self) -> dict[str, Any]:
        return {
            "pending": [
                [step, rank, ts, {k: encode_metric(v) for k, v in metrics.items()}]
                for step, ranks in self.pending.items()
                for rank, (ts, metrics) in ranks.items()
            ],
            "history": [list(h) for h in self.history],
        }

    def load_state(self, s: dict[str, Any]) -> None:
        self.pending = {}
        for step, rank, ts, metrics in s.get("pending", []):
            self.pending.setdefault(int(step), {})[int(rank)] = (float(ts), {k: float(v) for k, v in metrics.items()})
        self.history = deque(
            ((int(a), float(b), c) for a, b, c in s.get("history", [])), maxlen=self.rules.eval_loss_rising.evals + 1
        )
