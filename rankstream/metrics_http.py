"""Serving a Prometheus registry on ``/metrics``: prometheus-client's own HTTP server in a daemon thread."""

from __future__ import annotations

from typing import Any


def serve_metrics(registry: Any, port: int, host: str = "127.0.0.1") -> int:
    """Serve ``registry`` on ``host:port`` (port 0: any free one); returns the port. Raises OSError when taken."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_address[1])


__all__ = ["serve_metrics"]
