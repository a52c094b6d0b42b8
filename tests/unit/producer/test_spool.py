"""The on-disk spool: ordered, resumable, capped, and owned by one live process at a time."""

from __future__ import annotations

import os
from pathlib import Path

from rankstream.producer.spool import Spool, message_key, rank_dir, spool_dirs, spool_summary


def _payloads(start: int, n: int) -> list[bytes]:
    return [b'{"run_id":"r","seq":%d}' % i for i in range(start, start + n)]


def _drain(spool: Spool) -> list[bytes]:
    out = []
    while (chunk := spool.read(max_events=7)) is not None:
        out.extend(chunk.payloads)
        spool.commit(chunk)
    return out


def test_append_read_commit_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    spool.append(_payloads(0, 10))
    spool.append(_payloads(10, 5))
    assert spool.pending == 15
    assert _drain(spool) == _payloads(0, 15)
    assert spool.pending == 0
    assert not list((tmp_path / "s").glob("seg-*.log"))  # delivered segments are deleted
    spool.close()
    assert not (tmp_path / "s").exists()


def test_resume_after_restart_skips_acknowledged_and_ignores_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    spool.append(_payloads(0, 20))
    chunk = spool.read(max_events=8)
    spool.commit(chunk)
    spool.close()
    seg = next((tmp_path / "s").glob("seg-*.log"))
    with seg.open("ab") as f:
        f.write(b'{"run_id":"r","se')  # killed mid-write
    again = Spool(tmp_path / "s", max_bytes=1 << 20)
    assert again.acquire()
    assert again.pending == 12
    again.append(_payloads(20, 2))
    assert _drain(again) == _payloads(8, 14)


def test_cap_drops_oldest_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=4096)  # segments of 64 KiB max, cap 4 KiB: tiny segments
    spool.segment_bytes = 1024
    for i in range(40):
        spool.append(_payloads(i * 10, 10))
    assert spool.size_bytes <= 4096
    assert spool.dropped > 0
    remaining = _drain(spool)
    assert len(remaining) + spool.dropped == 400
    assert remaining == _payloads(400 - len(remaining), len(remaining))  # the newest survive, in order


def test_only_one_owner_and_summary_sees_live_owner(tmp_path: Path) -> None:
    d = rank_dir(tmp_path, "run/with:odd chars", 3)
    assert d.parent.name.startswith("run_with_odd_chars-") and d.name == "rank-3"
    owner = Spool(d)
    owner.append(_payloads(0, 3))
    other = Spool(d)
    assert not other.acquire()
    assert spool_dirs(tmp_path) == [d]
    [(path, pending, size, live)] = spool_summary(tmp_path)
    assert (path, pending, live) == (d, 3, True) and size > 0
    owner.close()
    assert other.acquire()


def test_forked_child_does_not_release_the_parents_lock(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    spool.append(_payloads(0, 1))
    pid = os.fork()
    if pid == 0:  # child: drop inherited descriptors, then exit without cleanup
        spool.forget_after_fork()
        os._exit(0)
    os.waitpid(pid, 0)
    assert not Spool(tmp_path / "s").acquire()  # still held by this (parent) process
    spool.append(_payloads(1, 1))
    assert _drain(spool) == _payloads(0, 2)


def test_message_key_reads_run_id_or_flags_corruption() -> None:
    assert message_key(b'{"run_id":"abc"}') == b"abc"
    assert message_key(b"{not json") is None
    assert message_key(b'{"run_id":""}') is None
