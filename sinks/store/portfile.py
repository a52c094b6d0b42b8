"""Where a sink that owns an embedded store says which port serves it, and how readers find it.

The file lives next to the store directory (``<store>.http.json``) and is
written atomically only once the HTTP server accepts connections; readers
check that the writer is alive and answers ``/ping`` before trusting it.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from pathlib import Path
from typing import Any


def port_file(store_path: Path) -> Path:
    return store_path.parent / f"{store_path.name}.http.json"


def write(store_path: Path, host: str, port: int, tls: bool = False) -> Path:
    path = port_file(store_path)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    info = {"pid": os.getpid(), "host": host, "port": port, "store": str(store_path), "tls": tls}
    tmp.write_text(json.dumps(info))
    tmp.replace(path)
    return path


def remove(store_path: Path) -> None:
    path = port_file(store_path)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_server(store_path: Path, timeout_s: float = 2.0) -> tuple[str, int] | None:
    """``(host, port)`` of the live sink serving ``store_path``, or None when no sink owns it."""
    try:
        info: dict[str, Any] = json.loads(port_file(store_path).read_text())
        host, port, pid = str(info["host"]), int(info["port"]), int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _alive(pid):
        return None
    scheme, context = "http", None
    if info.get("tls"):  # a local self-signed certificate: the ping only checks that the server answers
        scheme, context = "https", ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(f"{scheme}://{host}:{port}/ping", timeout=timeout_s, context=context) as response:
            if response.status == 200:
                return host, port
    except OSError:
        return None
    return None


def uses_tls(store_path: Path) -> bool:
    """Whether the server named by the port file serves HTTPS (``rankstream store serve --tls-cert``)."""
    try:
        return bool(json.loads(port_file(store_path).read_text()).get("tls"))
    except (OSError, ValueError, AttributeError):
        return False
