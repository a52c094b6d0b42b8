"""Topology-aware parts of an aligned step: the loss over its owners, exact global gradient norms.

Under FSDP / ZeRO / tensor parallelism each rank holds a part of the gradients, and the mean of
per-rank norms is not the model's norm. A rank that publishes ``grad_sq`` (``_adapter``,
``_backbone``): the sum of squares of the part it holds) lets the stream compute the model's norms
exactly, with no collective in the training loop::

    grad_norm = sqrt(sum over distinct parts of grad_sq)

Ranks that declared the same ``shard`` index hold replicas of one part (DP replicas): the first in
rank order counts, the others not. The global value is published only when every part of the
run's layout is present in the step (``grad_parts.exact``); the per-rank values the producer sent
stay available as ``<name>_shard`` summaries. Runs without a topology never get here.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

from rankstream.stream_jobs.core.aggregate import aggregate
from rankstream.stream_jobs.core.topology import RunTopology

#: (per-rank sum of squares, the norm it makes) of the standard metrics.
GRAD_PARTS = (
    ("grad_sq", "grad_norm"),
    ("grad_sq_adapter", "grad_norm_adapter"),
    ("grad_sq_backbone", "grad_norm_backbone"),
)
#: Suffix of the summaries that keep the per-rank (shard) values once a global norm replaces them.
SHARD_SUFFIX = "_shard"


def apply_topology(
    topology: RunTopology,
    ranks: list[int],
    per_rank: list[dict[str, float]],
    summaries: dict[str, dict[str, Any]],
    nonfinite: dict[str, int],
    record: dict[str, Any],
) -> list[Hashable] | None:
    """Rewrite one step's summaries for its run's layout (in place); returns each rank's peer key
    for the straggler rule, or None when every rank is everybody's peer."""
    _loss_over_owners(topology, ranks, per_rank, summaries, nonfinite)
    record["loss_owners"] = topology.loss_owners(record["world_size"])
    if topology.shard_count:
        for m in per_rank:
            if "grad_sq" in m or "grad_sq_adapter" in m or "grad_sq_backbone" in m:
                record["grad_parts"] = _global_norms(topology, ranks, per_rank, summaries, nonfinite)
                break
    peers = [topology.peer_key(rank) for rank in ranks]
    first = peers[0] if peers else None
    return None if all(key == first for key in peers) else peers


def _loss_over_owners(
    topology: RunTopology,
    ranks: list[int],
    per_rank: list[dict[str, float]],
    summaries: dict[str, dict[str, Any]],
    nonfinite: dict[str, int],
) -> None:
    """The loss of a pipeline's last stage, once per TP group: other ranks' values are not the loss."""
    owns = topology.owns_loss
    if all(owns(rank) for rank, m in zip(ranks, per_rank, strict=True) if "loss" in m):
        return
    rk = [rank for rank, m in zip(ranks, per_rank, strict=True) if "loss" in m and owns(rank)]
    values = [{"loss": m["loss"]} for rank, m in zip(ranks, per_rank, strict=True) if "loss" in m and owns(rank)]
    owned, bad = aggregate(rk, values)
    summaries.pop("loss", None)
    nonfinite.pop("loss", None)
    summaries.update(owned)
    nonfinite.update(bad)


def _global_norms(
    topology: RunTopology,
    ranks: list[int],
    per_rank: list[dict[str, float]],
    summaries: dict[str, dict[str, Any]],
    nonfinite: dict[str, int],
) -> dict[str, Any]:
    expected = topology.shard_count
    present = 0
    for sq_name, norm_name in GRAD_PARTS:
        parts: dict[int, tuple[int, float]] = {}  # shard index -> (first rank holding it, its sum of squares)
        for rank, m in zip(ranks, per_rank, strict=True):
            value = m.get(sq_name)
            if value is None:
                continue
            shard = topology.shard_of(rank)
            if shard is not None and shard[0] not in parts:
                parts[shard[0]] = (rank, value)
        if not parts and not any(sq_name in m for m in per_rank):
            continue
        present = max(present, len(parts))
        shard_summary = summaries.pop(norm_name, None)
        if sq_name == "grad_sq_adapter":
            shard_summary = _without_empty_shards(ranks, per_rank, shard_summary)
        if shard_summary is not None:
            summaries[norm_name + SHARD_SUFFIX] = shard_summary
        bad = sum(1 for _, v in parts.values() if v - v != 0.0)
        if bad:
            nonfinite[norm_name] = max(nonfinite.get(norm_name, 0), bad)
        elif len(parts) == expected:
            summaries[norm_name] = _global_summary(parts, expected)
    return {"expected": expected, "present": present, "exact": present == expected}


def _global_summary(parts: dict[int, tuple[int, float]], n: int) -> dict[str, Any]:
    """The global norm as a summary: one value (``n`` parts); argmin/argmax: the ranks of the smallest
    and largest part (which shard contributes most)."""
    total = math.fsum(v for _, v in parts.values())
    norm = math.sqrt(total) if total > 0.0 else 0.0
    smallest = min(parts.values(), key=lambda p: (p[1], p[0]))
    largest = max(parts.values(), key=lambda p: (p[1], -p[0]))
    return {"mean": norm, "min": norm, "max": norm, "std": 0.0, "argmin": smallest[0], "argmax": largest[0], "n": n}


def _without_empty_shards(
    ranks: list[int], per_rank: list[dict[str, float]], summary: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The per-rank adapter norms without ranks whose adapter shard is empty (``grad_sq_adapter`` 0 while
    another rank's is not): under FSDP2 a LoRA matrix of rank 8 over 64 ranks leaves most shards empty,
    and their 0 is no reading of the adapter."""
    if summary is None or summary["min"] > 0.0:
        return summary
    if not any(m.get("grad_sq_adapter", 0.0) > 0.0 for m in per_rank):
        return summary  # every adapter gradient is zero: that reading is real
    kept = [
        (rank, m["grad_norm_adapter"])
        for rank, m in zip(ranks, per_rank, strict=True)
        if "grad_norm_adapter" in m and m.get("grad_sq_adapter") != 0.0
    ]
    out, _ = aggregate([r for r, _ in kept], [{"v": v} for _, v in kept])
    return out.get("v")
