"""The on-disk spool: ordered, resumable, capped, and owned by one live process at a time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rankstream.cli import app
from rankstream.config import Settings
from rankstream.producer import Reporter
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


def test_the_default_spool_root_is_a_local_cache_never_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # often NFS/Lustre on a cluster
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Settings.from_env({}).spool_path == tmp_path / "xdg" / "rankstream" / "spool"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings.from_env({}).spool_path == tmp_path / "home" / ".cache" / "rankstream" / "spool"
    state = {"RANKSTREAM_STATE_DIR": str(tmp_path / "state")}
    assert Settings.from_env(state).spool_path == tmp_path / "state" / "spool"  # a state dir you chose
    spool_dir = {**state, "RANKSTREAM_SPOOL_DIR": str(tmp_path / "spool")}
    assert Settings.from_env(spool_dir).spool_path == tmp_path / "spool"
    assert Settings.from_env({}).state_path == work / ".rankstream"  # the services' state is unchanged
    reporter = Reporter("where", settings=Settings.from_env({}), rank=2, world_size=4, heartbeat_s=0)
    try:
        assert reporter.spool.dir == rank_dir(tmp_path / "home" / ".cache" / "rankstream" / "spool", "where", 2)
    finally:
        reporter.close(timeout=0)


def test_spool_status_and_flush_default_to_where_reporters_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANKSTREAM_SPOOL_DIR", str(tmp_path / "spool"))
    runner = CliRunner()
    nothing = runner.invoke(app, ["spool", "status"])
    assert nothing.exit_code == 0 and f"no spooled events in {tmp_path / 'spool'}" in nothing.output
    Spool(rank_dir(tmp_path / "spool", "left", 0)).append(_payloads(0, 3))  # owned by this (live) process
    listed = runner.invoke(app, ["spool", "status"])
    assert listed.exit_code == 0 and "3 events" in listed.output and "live reporter" in listed.output
    flushed = runner.invoke(app, ["spool", "flush", "--bootstrap", "127.0.0.1:9"])
    assert flushed.exit_code == 0 and "owned by a live reporter" in flushed.output
