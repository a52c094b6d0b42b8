"""A full disk: no torn line, byte counts equal to the files, every lost event counted, log() never raises."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import rankstream.producer.spool as spool_module
from rankstream.config import Settings
from rankstream.producer import Reporter
from rankstream.producer.spool import Spool, rank_dir
from rankstream.schema import decode_event
from tests.unit.producer.test_sender import FakeTransport, wait_until


def _payloads(start: int, n: int) -> list[bytes]:
    return [b'{"run_id":"r","seq":%d,"pad":"%s"}' % (i, b"x" * 40) for i in range(start, start + n)]


def _files_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("seg-*.log"))


def _lines(directory: Path) -> list[bytes]:
    out: list[bytes] = []
    for seg in sorted(directory.glob("seg-*.log")):
        data = seg.read_bytes()
        assert not data or data.endswith(b"\n"), f"torn line in {seg.name}"
        out += data.splitlines()
    return out


def test_a_short_write_then_enospc_is_cut_back_to_the_last_whole_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "s")
    spool.append(_payloads(0, 5))
    writer_fd = spool._writer[1] if spool._writer else -1
    real_write = os.write
    calls = {"n": 0}

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        if fd != writer_fd:
            return real_write(fd, data)
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:17]))  # a short write: the disk filled up mid-batch
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module.os, "write", full_disk)
    with pytest.raises(OSError):
        spool.append(_payloads(5, 3))
    monkeypatch.setattr(spool_module.os, "write", real_write)
    assert spool.size_bytes == _files_bytes(tmp_path / "s")  # the bookkeeping equals the file
    assert _lines(tmp_path / "s") == _payloads(0, 5)  # no torn line, the failed batch is gone whole
    assert spool.pending == 5
    spool.append(_payloads(8, 2))  # space again: appends go on after the last whole message
    assert _lines(tmp_path / "s") == _payloads(0, 5) + _payloads(8, 2)
    assert spool.size_bytes == _files_bytes(tmp_path / "s")
    spool.close()
    again = Spool(tmp_path / "s")
    assert again.acquire() and again.pending == 7


def test_a_failed_truncate_seals_the_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "s")
    spool.append(_payloads(0, 2))

    def fail(*args: object) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(spool_module.os, "write", fail)
    monkeypatch.setattr(spool_module.os, "ftruncate", fail)
    with pytest.raises(OSError):
        spool.append(_payloads(2, 1))
    monkeypatch.undo()
    spool.append(_payloads(3, 1))  # goes to a new segment
    assert len(list((tmp_path / "s").glob("seg-*.log"))) == 2
    drained = []
    while (chunk := spool.read()) is not None:
        drained += chunk.payloads
        spool.commit(chunk)
    assert drained == _payloads(0, 2) + _payloads(3, 1)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only; skipped elsewhere)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_costs_the_training_loop_nothing_and_every_loss_is_counted(tiny_fs: Path) -> None:
    transport = FakeTransport()
    transport.down = True
    settings = Settings(bootstrap_servers="fake:9092", spool_dir=str(tiny_fs), topic_prefix="unit")
    r = Reporter("full", settings=settings, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0,
                 transport=transport)  # fmt: skip
    metrics = {f"metric_{i:02d}": float(i) for i in range(40)}  # ~1 KB per event: 64 KiB holds ~60
    for step in range(400):
        r.log(step, metrics)  # never raises
        if step % 50 == 0:
            wait_until(lambda: r.stats["queued"] == 0, "the sender to keep up")
    wait_until(lambda: r.stats["queued"] == 0, "the sender to finish")
    stats = r.stats
    directory = rank_dir(tiny_fs, "full", 0)
    assert stats["dropped_spool_error"] > 0, stats
    assert r.spool.size_bytes == _files_bytes(directory)
    r.close(timeout=0.2)
    stats = r.stats
    seqs = [decode_event(line)["seq"] for line in _lines(directory)]  # every line whole and decodable
    assert seqs == sorted(seqs) and len(seqs) == stats["spooled"]
    assert stats["spooled"] + stats["dropped_spool_error"] == stats["enqueued"] == 402
