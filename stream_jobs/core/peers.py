"""Peer groups of a step's ranks: under pipeline / tensor parallelism, ranks that do the same work.

A first pipeline stage is slower than the last one by design, so a rank is compared with its
peers (same stage and TP position, across data-parallel replicas), never with the whole run.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from rankstream.stream_jobs.core.aggregate import median


def peer_medians(values: Sequence[float], peers: Sequence[Hashable] | None) -> list[float]:
    """For each value, the median of its peer group (``peers[i]``: the group of ``values[i]``); one group
    for all when ``peers`` is None. A rank alone in its group is its own median (never an outlier)."""
    if peers is None:
        return [median(values)] * len(values)
    groups: dict[Hashable, list[float]] = {}
    for key, value in zip(peers, values, strict=True):
        groups.setdefault(key, []).append(value)
    medians = {key: median(group) for key, group in groups.items()}
    return [medians[key] for key in peers]
