"""A run's parallel layout, from the ``topology`` its ranks declare in ``run_start`` (pure, exportable).

Under tensor (TP), pipeline (PP), context and expert parallelism ranks do different work by design,
and under FSDP / ZeRO they hold different parts of the gradients. What the aligned step needs:

- who owns the loss: the last pipeline stage computes it, and every rank of a TP group reports the
  same value, so the loss is aggregated over ``pp == last`` and ``tp == 0`` only;
- who is a peer of whom: the straggler rule compares a rank with the ranks at the same pipeline
  stage and TP position (its data-parallel replicas), not with a stage that does other work;
- which gradient part a rank holds (``shard``: index and count; equal indices are replicas), so
  the global norms are summed over distinct parts (:mod:`.global_norms`).

A rank that declared nothing counts as today: it owns the loss and is everybody's peer. A rank
that declares again (a relaunch, a new attempt that changes the layout) replaces what it declared.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

#: One rank's layout: (pp rank, pp size, tp rank, cp rank, ep rank, shard index, shard count, grads).
Coords = tuple[int, int, int, int, int, int, int, str]

_UNIT = [0, 1]


def coords_of(topology: dict[str, Any]) -> Coords:
    """The parts of a validated ``topology`` the stream job uses (absent dimensions are ``[0, 1]``)."""
    pp = topology.get("pp", _UNIT)
    shard = topology.get("shard", _UNIT)
    grads = topology.get("grads") or ("shard" if shard[1] > 1 else "replica")
    return (
        pp[0],
        pp[1],
        topology.get("tp", _UNIT)[0],
        topology.get("cp", _UNIT)[0],
        topology.get("ep", _UNIT)[0],
        shard[0],
        shard[1],
        grads,
    )


class RunTopology:
    """The declared layout of every rank of one run, and what the aligned step derives from it."""

    __slots__ = ("declared", "raw", "shard_count", "version")

    def __init__(self) -> None:
        #: rank -> its coordinates; ``raw`` keeps the validated objects for the saved state.
        self.declared: dict[int, Coords] = {}
        self.raw: dict[int, dict[str, Any]] = {}
        #: The number of distinct gradient parts of the latest declaration (0: no rank holds a shard).
        self.shard_count = 0
        #: Bumped on every change, so callers can cache what they derive.
        self.version = 0

    def __bool__(self) -> bool:
        return bool(self.declared)

    def declare(self, rank: int, topology: dict[str, Any]) -> None:
        coords = coords_of(topology)
        if self.declared.get(rank) == coords:
            return
        self.declared[rank] = coords
        self.raw[rank] = topology
        self.shard_count = coords[6] if coords[7] != "global" else 0
        self.version += 1

    def forget_from(self, world_size: int) -> None:
        """The world shrank: ranks at or beyond ``world_size`` are gone."""
        gone = [rank for rank in self.declared if rank >= world_size]
        for rank in gone:
            del self.declared[rank]
            del self.raw[rank]
        if gone:
            self.version += 1

    # ------------------------------------------------------------------ derived

    def owns_loss(self, rank: int) -> bool:
        """The loss of ``rank`` is its own: last pipeline stage and first rank of its TP group."""
        c = self.declared.get(rank)
        return c is None or (c[0] == c[1] - 1 and c[2] == 0)

    def loss_owners(self, world_size: int) -> int:
        """How many of ``world_size`` ranks produce the loss by design (undeclared ranks count)."""
        declared = [c for r, c in self.declared.items() if r < world_size]
        owners = sum(1 for c in declared if c[0] == c[1] - 1 and c[2] == 0)
        return owners + world_size - len(declared)

    def peer_key(self, rank: int) -> Hashable:
        """Ranks with equal keys do the same work per step: same pipeline stage and TP position."""
        c = self.declared.get(rank)
        return (0, 0) if c is None else (c[0], c[2])

    def shard_of(self, rank: int) -> tuple[int, int] | None:
        """(index, count) of the gradient part ``rank`` holds, when it declared one of the run's layout."""
        c = self.declared.get(rank)
        if c is None or c[7] == "global" or c[6] != self.shard_count:
            return None
        return c[5], c[6]

    # ------------------------------------------------------------------- state

    def to_state(self) -> dict[str, Any]:
        return {str(rank): topo for rank, topo in self.raw.items()}

    def load_state(self, state: dict[str, Any] | None) -> None:
        for rank, topo in (state or {}).items():
            self.declare(int(rank), topo)
