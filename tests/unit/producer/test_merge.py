"""Orphaned spools of several ranks are delivered merged by ts, each rank's order kept, nothing lost or repeated."""

from __future__ import annotations

import math
from pathlib import Path

from rankstream.producer.events import EventEncoder
from rankstream.producer.merge import MERGE_MEMORY_BYTES, MIN_CHUNK_BYTES, SpoolMerge, chunk_bytes_for, orphan_runs
from rankstream.producer.spool import READ_CHUNK_BYTES, Spool, rank_dir
from rankstream.schema import decode_event

T0 = 1_700_000_000.0


def write_rank(root: Path, run_id: str, rank: int, stamps: list[float], inc: str = "inc0", batch: int = 37) -> None:
    """A dead reporter's spool: ``stamps[i]`` is the ts of seq i, written in batches like a sender does."""
    enc = EventEncoder(run_id, rank, 4, rank, host="h", inc=inc)
    spool = Spool(rank_dir(root, run_id, rank), max_bytes=1 << 20)  # 128 KiB segments: several per rank
    assert spool.acquire()
    payloads = [enc.encode("step", seq, ts, seq, {"loss": 1.0, "pad": float(seq)}) for seq, ts in enumerate(stamps)]
    for i in range(0, len(payloads), batch):
        spool.append(payloads[i : i + batch])
    spool.close(remove_if_empty=False)  # the lock goes with the process: now an orphan


def drain(merge: SpoolMerge, fail_every: int = 0) -> list[dict]:
    """Deliver like flush_spool does; every ``fail_every``-th batch is not acknowledged (rewound, sent again)."""
    delivered: list[dict] = []
    attempts = 0
    while (batch := merge.next_batch(max_events=300)) is not None:
        attempts += 1
        if fail_every and attempts % fail_every == 0:
            merge.rewind()
            continue
        for key, payload in batch:
            event = decode_event(payload)
            assert key == event["run_id"].encode()
            delivered.append(event)
        merge.commit()
    return delivered


def locked_run(root: Path, run_id: str) -> list[Spool]:
    runs = [spools for spools in orphan_runs(root) if spools[0].dir.parent.name == run_id]
    assert len(runs) == 1
    return runs[0]


def assert_ranks_complete(events: list[dict], lengths: dict[int, int]) -> None:
    for rank, n in lengths.items():
        assert [e["seq"] for e in events if e["rank"] == rank] == list(range(n)), f"rank {rank}"


def test_ranks_are_merged_by_ts_across_chunks_and_segments(tmp_path: Path) -> None:
    lengths = {0: 1500, 1: 1500, 2: 900, 3: 1200}  # rank 2 starts late, rank 3 ends early
    for rank, n in lengths.items():
        start = 300 if rank == 2 else 0
        write_rank(tmp_path, "run", rank, [T0 + (start + i) * 0.02 + rank * 0.001 for i in range(n)])
    merge = SpoolMerge(locked_run(tmp_path, "run"), chunk_bytes=5000)  # ~20 events per chunk
    events = drain(merge)
    merge.close()

    stamps = [e["ts"] for e in events]
    assert stamps == sorted(stamps)  # one stream in event-time order
    assert_ranks_complete(events, lengths)  # every seq of every rank, once, in seq order
    assert {e["rank"] for e in events[:40]} == {0, 1, 3}  # interleaved from the first batch on, not rank by rank
    assert not list(tmp_path.rglob("seg-*.log"))  # everything acknowledged was deleted


def test_a_batch_kafka_did_not_acknowledge_is_delivered_again_and_nothing_twice(tmp_path: Path) -> None:
    lengths = {0: 700, 1: 650}
    for rank, n in lengths.items():
        write_rank(tmp_path, "flaky", rank, [T0 + i * 0.01 + rank * 0.005 for i in range(n)])
    merge = SpoolMerge(locked_run(tmp_path, "flaky"), chunk_bytes=3000)
    events = drain(merge, fail_every=3)
    merge.close()
    assert_ranks_complete(events, lengths)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)


def test_a_flush_stopped_halfway_resumes_where_it_stopped(tmp_path: Path) -> None:
    lengths = {0: 800, 1: 800, 2: 800}
    for rank, n in lengths.items():
        write_rank(tmp_path, "resumed", rank, [T0 + i * 0.01 + rank * 0.003 for i in range(n)])
    first = SpoolMerge(locked_run(tmp_path, "resumed"), chunk_bytes=4000)
    delivered: list[dict] = []
    for _ in range(5):  # five acknowledged batches (partial chunks committed), then the process stops
        batch = first.next_batch(max_events=70)
        assert batch
        delivered += [decode_event(p) for _, p in batch]
        first.commit()
    first.next_batch(max_events=70)  # taken but never acknowledged
    first.close()
    second = SpoolMerge(locked_run(tmp_path, "resumed"))
    delivered += drain(second)
    second.close()
    assert_ranks_complete(delivered, lengths)


def test_each_ranks_own_order_is_kept_even_where_its_clock_stepped_back(tmp_path: Path) -> None:
    write_rank(tmp_path, "clock", 0, [T0 + i for i in range(10)])
    write_rank(tmp_path, "clock", 1, [T0 + i + 0.5 for i in range(5)] + [T0 + i - 3 for i in range(5, 10)])
    (tmp_path / "clock" / "rank-1" / "seg-00000001.log").open("ab").write(b"{torn\n")  # a corrupt line
    merge = SpoolMerge(locked_run(tmp_path, "clock"))
    events = drain(merge)
    merge.close()
    assert_ranks_complete(events, {0: 10, 1: 10})
    assert merge.corrupt == 1
    order = [(e["rank"], e["seq"]) for e in events]
    # rank 1's clock stepped back 3.5 s after seq 4: seq 5 (ts T0+2) still comes after seq 4, not before rank 0's T0+3
    assert order.index((0, 3)) < order.index((1, 4)) < order.index((1, 5)) < order.index((0, 5))


def test_orphan_runs_groups_ranks_by_run_and_skips_live_and_excluded_spools(tmp_path: Path) -> None:
    for run_id in ("a", "b"):
        for rank in range(3):
            write_rank(tmp_path, run_id, rank, [T0])
    live = Spool(rank_dir(tmp_path, "a", 1))
    assert live.acquire()  # a live reporter owns a/rank-1
    try:
        runs = list(orphan_runs(tmp_path, exclude=rank_dir(tmp_path, "b", 0)))
        assert [[s.dir.name for s in spools] for spools in runs] == [["rank-0", "rank-2"], ["rank-1", "rank-2"]]
        assert [spools[0].dir.parent.name for spools in runs] == ["a", "b"]
        for spools in runs:
            for spool in spools:
                spool.close(remove_if_empty=False)
    finally:
        live.close(remove_if_empty=False)


def test_memory_bound_per_spool() -> None:
    assert chunk_bytes_for(1) == READ_CHUNK_BYTES
    assert chunk_bytes_for(256) == MERGE_MEMORY_BYTES // 256
    assert chunk_bytes_for(100_000) == MIN_CHUNK_BYTES
    assert math.isclose(chunk_bytes_for(64) * 64, MERGE_MEMORY_BYTES)
