"""The demo's web dashboard: ``rankstream ui`` over the demo's store, its URL printed for the user.

It reads the store through the sink's HTTP interface like every other reader, so it shows
the run live while the job trains; with ``--keep`` it keeps serving after the demo ends.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console


class DemoDashboard:
    """``rankstream ui`` as a child process (own session, so ``--keep`` leaves it serving)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.url: str | None = None
        self.log_path: Path | None = None

    def start(self, store_path: Path, log_dir: Path, console: Console, timeout_s: float = 60.0) -> None:
        """Start it and print its URL; a dashboard that does not come up is reported, not fatal."""
        self.log_path = log_dir / "ui.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rankstream.cli", "ui", "--dsn", f"chdb://{store_path}", "--port", "0"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.startswith("rankstream ui: serving "):
                    self.url = line.split()[3]
                    console.print(f"[green]✓[/] web dashboard pid {self.proc.pid}: [bold]{self.url}[/]")
                    return
            time.sleep(0.2)
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        console.print(f"[yellow]![/] the web dashboard did not start ({tail[0][:200]}); log {self.log_path}")

    def note(self) -> str:
        """One line for the end of the demo: where to look, and what keeps running."""
        if self.url is None or self.proc is None:
            return ""
        return f"web dashboard: {self.url} (pid {self.proc.pid})"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
