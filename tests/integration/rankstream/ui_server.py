"""``rankstream ui`` as a child process on a free 127.0.0.1 port, its URL read from its first line."""

from __future__ import annotations

import base64
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson


class UIServer:
    """The UI server over ``dsn``; ``url`` once it printed that it serves."""

    def __init__(self, dsn: str, log_path: Path, *extra: str) -> None:
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rankstream.cli", "ui", "--dsn", dsn, "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        self.url = self._wait_url(60)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.log_path.open("w") as log:
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace")
                log.write(line)
                log.flush()
                self.lines.put(line)

    def _wait_url(self, timeout_s: float) -> str:
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"rankstream ui printed nothing in {timeout_s}s") from None
        assert line.startswith("rankstream ui: serving http://127.0.0.1:"), line
        return line.split()[3].rstrip("/")

    def get(self, path: str, auth: tuple[str, str] | None = None) -> Any:
        """The JSON of an API path (what the page draws), signed in as ``auth`` (user, password) if given."""
        request = urllib.request.Request(self.url + path)
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            return orjson.loads(response.read())

    def status(self, path: str, auth: tuple[str, str] | None = None) -> int:
        """The HTTP status of ``path`` (an error status is an answer here, not an exception)."""
        try:
            self.get(path, auth)
        except urllib.error.HTTPError as exc:
            return exc.code
        return 200

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self._reader.join(10)
        return code
