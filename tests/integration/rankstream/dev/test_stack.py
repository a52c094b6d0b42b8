"""The local stack: a private broker (not the session one) started, re-started, stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.dev.stack import StackError, broker_status, start_broker, stop_broker
from rankstream.kafka_admin import broker_ready

pytestmark = pytest.mark.kafka


def _free_port_pair() -> int:
    """A port p such that p and p+1 are both free on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rankstream.cli", *args], capture_output=True, text=True, timeout=180, check=False
    )


def test_up_is_idempotent_and_down_leaves_nothing(tmp_path: Path) -> None:
    port = _free_port_pair()
    state = str(tmp_path / "state")
    up = _cli("stack", "up", "--state-dir", state, "--port", str(port), "--partitions", "2")
    assert up.returncode == 0, up.stderr
    assert f"127.0.0.1:{port}" in up.stdout
    settings = Settings(state_dir=state, kafka_port=port)
    first = broker_status(settings)
    assert first.running and first.ready and first.pid

    again = _cli("stack", "up", "--state-dir", state, "--port", str(port))
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert broker_status(settings).pid == first.pid

    status = _cli("stack", "status", "--state-dir", state)
    assert status.returncode == 0 and "ready" in status.stdout

    down = _cli("stack", "down", "--state-dir", state)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not os.path.exists(f"/proc/{first.pid}") or Path(f"/proc/{first.pid}/cmdline").read_bytes() == b""
    assert not broker_ready(f"127.0.0.1:{port}", timeout_s=1.0)

    down_again = _cli("stack", "down", "--state-dir", state)
    assert down_again.returncode == 0 and "not running" in down_again.stdout
    gone = _cli("stack", "status", "--state-dir", state)
    assert gone.returncode == 3
    assert "not ready" in gone.stderr and "Traceback" not in gone.stderr


def test_port_taken_is_one_clear_error(tmp_path: Path) -> None:
    port = _free_port_pair()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        with pytest.raises(StackError, match=f"port {port} .* is taken"):
            start_broker(Settings(state_dir=str(tmp_path), kafka_port=port))
        result = _cli("stack", "up", "--state-dir", str(tmp_path), "--port", str(port))
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "is taken" in result.stderr
    assert not stop_broker(Settings(state_dir=str(tmp_path), kafka_port=port))
