"""`rankstream ui` / `export` fail with one line and the documented exit codes (no store needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rankstream.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (("ui", "--dsn", "chdb:///nonexistent/store", "--login"), 2, "--login needs a store server"),
        (("ui", "--dsn", "http://127.0.0.1:1", "--port", "0"), 3, "unavailable"),
        (("export", "r1", "/tmp/x", "--format", "csv", "--dsn", "http://127.0.0.1:1"), 2, "expected one of"),
        (("export", "r1", "/tmp/x", "--dsn", "http://127.0.0.1:1"), 3, "unavailable"),
    ],
)
def test_failures_are_one_line_with_their_exit_code(args: tuple[str, ...], code: int, text: str) -> None:
    proc = cli(*args)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rankstream: error: ") and text in lines[0]


def test_a_taken_port_is_a_configuration_error(tmp_path: Path) -> None:
    from rankstream.errors import ConfigError
    from rankstream.ui.server import bind

    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1"):
            bind("127.0.0.1", taken.getsockname()[1]).close()
    finally:
        taken.close()
