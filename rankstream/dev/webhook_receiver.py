"""A local webhook receiver: stands in for Slack, a DingTalk robot, a Feishu bot (tests and the demo).

It records every POST (path, query, JSON body, whether a DingTalk or Feishu
signature checked out) and answers like the real service: DingTalk and Feishu
``{"errcode"/"code": 0}`` or their error codes for a bad signature, Slack
``ok``. ``fail_next[path]`` makes the next requests to ``path`` fail with those statuses (retries).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from rankstream.sinks.notify.signing import feishu_sign, verify_dingtalk


@dataclass
class Received:
    path: str
    query: dict[str, str]
    body: Any
    signed: bool | None  # None: the path is not signed
    at: float = field(default_factory=time.time)


class WebhookReceiver:
    """``with WebhookReceiver(dingtalk_secret=...) as hooks:`` serves on ``hooks.url`` (any free port)."""

    def __init__(self, *, dingtalk_secret: str = "", feishu_secret: str = "", port: int = 0) -> None:
        self.dingtalk_secret = dingtalk_secret
        self.feishu_secret = feishu_secret
        self.received: list[Received] = []
        self.fail_next: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:  # quiet: tests read ``received``
                pass

            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                query = dict(parse_qsl(parts.query))
                status, answer, signed = receiver._answer(parts.path, query, body)
                with receiver._lock:
                    receiver.received.append(Received(parts.path, query, body, signed))
                data = answer.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if answer.startswith("{") else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _answer(self, path: str, query: dict[str, str], body: Any) -> tuple[int, str, bool | None]:
        with self._lock:
            failures = self.fail_next.get(path)
            if failures:
                return failures.pop(0), "unavailable", None
        if path.startswith("/dingtalk"):
            signed = not self.dingtalk_secret or verify_dingtalk(query, self.dingtalk_secret, int(time.time() * 1000))
            if not signed:
                return 200, '{"errcode":310000,"errmsg":"sign not match"}', False
            return 200, '{"errcode":0,"errmsg":"ok"}', bool(self.dingtalk_secret)
        if path.startswith("/feishu"):
            signed = not self.feishu_secret or (
                isinstance(body, dict)
                and str(body.get("sign")) == feishu_sign(int(body.get("timestamp", 0)), self.feishu_secret)
            )
            if not signed:
                return 200, '{"code":19021,"msg":"sign match fail"}', False
            return 200, '{"code":0,"msg":"success"}', bool(self.feishu_secret)
        return 200, "ok", None
