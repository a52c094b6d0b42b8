"""`rankstream demo` failure modes: one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def _demo(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rankstream.cli", "demo", "--state-dir", str(tmp_path / "demo"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_port_taken(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = _demo(tmp_path, "--port", str(port))
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert f"port {port}" in result.stderr and "is taken" in result.stderr


def test_no_java(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PATH"}
    env["PATH"] = str(tmp_path)  # nothing on PATH: no java
    result = _demo(tmp_path, env=env)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("rankstream: error: Java 17+ is needed")


def test_bad_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = _demo(tmp_path, "--ranks", "2")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
