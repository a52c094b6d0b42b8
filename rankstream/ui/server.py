"""Serve the UI with uvicorn on a socket bound here, so port 0 (a free port) works and the URL is known."""

from __future__ import annotations

import signal
import socket
import sys
from types import FrameType

from rankstream.errors import ConfigError


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: a free port); a taken port is a one-line ConfigError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    """uvicorn re-raises the SIGTERM it stopped on once it has shut down; that is a clean stop here."""
    raise SystemExit(0)


def serve(dsn: str, host: str = "127.0.0.1", port: int = 8080, *, login: bool = False) -> None:
    """Open the store, bind, print the URL on one line, then serve until interrupted."""
    import uvicorn

    from rankstream.ui.app import create_app
    from rankstream.ui.reader import StoreReader

    reader = StoreReader(dsn, login=login)
    sock = bind(host, port)
    config = uvicorn.Config(create_app(reader), log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    print(f"rankstream ui: serving {url_of(sock)} (store: {reader.how}); Ctrl-C to stop", flush=True)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        reader.close()
        print("rankstream ui: stopped", file=sys.stderr, flush=True)
