"""A real AlertManager for tests, the notify benchmark and the demo: Debian's ``prometheus-alertmanager``.

:func:`ensure_alertmanager` finds the binary, or installs the Debian packages
with ``infra/prometheus/install.sh`` (root and apt-get; elsewhere it says what
to install). :class:`AlertManagerProcess` runs one on 127.0.0.1 with its own
config and storage directory, clustering off, waits until ``/-/ready``
answers, and stops it by its PID. Readers use the v2 API (``alerts()``,
``groups()``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from rankstream.errors import ServiceUnavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALLER = REPO_ROOT / "infra" / "prometheus" / "install.sh"
EXAMPLE_CONFIG = REPO_ROOT / "infra" / "prometheus" / "alertmanager.yml"
BINARIES = ("prometheus-alertmanager", "alertmanager")


def find_alertmanager() -> str | None:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_alertmanager(install: bool = True) -> str:
    """The AlertManager binary; installs Debian's packages first when missing (and ``install``)."""
    path = find_alertmanager()
    if path is None and install and INSTALLER.exists():
        done = subprocess.run(["bash", str(INSTALLER)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise ServiceUnavailable(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "install failed")
        path = find_alertmanager()
    if path is None:
        raise ServiceUnavailable(
            "prometheus-alertmanager not found: apt-get install prometheus-alertmanager (docs/notify.md)"
        )
    return path


def local_config(path: Path, hooks_url: str, *, group_wait: str = "1s", group_interval: str = "1s") -> Path:
    """The example ``infra/prometheus/alertmanager.yml`` with its Slack and DingTalk receivers pointed at a local
    webhook receiver (``/am-slack``, ``/am-dingtalk``) and short group timers (tests and the demo cannot wait)."""
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    config["route"]["group_wait"] = group_wait
    config["route"]["group_interval"] = group_interval
    for receiver in config["receivers"]:
        for slack in receiver.get("slack_configs", []):
            slack["api_url"] = f"{hooks_url}/am-slack"
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{hooks_url}/am-dingtalk"
    path.write_text(yaml.safe_dump(config))
    return path


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class AlertManagerProcess:
    """One AlertManager on ``127.0.0.1:port`` with ``config`` and a storage dir under ``workdir``."""

    def __init__(self, config: Path, workdir: Path, port: int, binary: str | None = None) -> None:
        self.config = config
        self.workdir = workdir
        self.port = port
        self.binary = binary or ensure_alertmanager()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "alertmanager.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> AlertManagerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # no gossip port: one instance, nothing to clash with
            "--log.level=info",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceUnavailable(f"alertmanager exited with {self.proc.returncode}: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise ServiceUnavailable(f"alertmanager not ready on {self.url} after {timeout_s:.0f}s: see {self.log_path}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> AlertManagerProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- v2 API

    def alerts(self, *, active: bool = True, resolved: bool = False, inhibited: bool = True) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts`` (resolved alerts show only with ``resolved``: AlertManager keeps them a while)."""
        flags = f"active={str(active).lower()}&silenced=true&inhibited={str(inhibited).lower()}&unprocessed=true"
        return list(_get_json(f"{self.url}/api/v2/alerts?{flags}"))

    def groups(self) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts/groups``: the notification groups (route group_by) with their alerts."""
        return list(_get_json(f"{self.url}/api/v2/alerts/groups"))
