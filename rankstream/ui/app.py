"""The web app: three pages (runs, run, compare) as static files, and the JSON they draw.

The pages are plain HTML + JavaScript with uPlot vendored under ``static/vendor`` (no CDN:
clusters are often air-gapped); every number comes from ``/api/*``, which the browser tests
read too. Queries are blocking, so the endpoints are plain functions: Starlette runs them in
its thread pool, each thread with its own store client.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rankstream.errors import RankstreamError, ServiceUnavailable, one_line
from rankstream.ui import api
from rankstream.ui.reader import NotAuthenticated, StoreReader, Viewer, ViewerReader

STATIC = Path(__file__).with_name("static")
_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class JSON(Response):
    """orjson: NaN and infinities become null, numpy-free and fast for long arrays."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _one(request: Request, name: str, default: str | None = None) -> str:
    value = request.query_params.get(name, default)
    if value is None or value == "":
        raise HTTPException(400, f"missing query parameter {name!r}")
    return value


def _int(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise HTTPException(400, f"{name}={value!r}: expected an integer") from None


def _since(text: str) -> int:
    if not text:
        return 0
    unit = _SINCE_UNITS.get(text[-1:])
    if unit is None or not text[:-1].isdigit():
        raise HTTPException(400, f"since={text!r}: expected a number and a unit (s, m, h, d, w), e.g. 7d")
    return int(text[:-1]) * unit


_CHALLENGE = {"WWW-Authenticate": 'Basic realm="rankstream", charset="UTF-8"'}


def viewer_of(request: Request) -> Viewer | None:
    """The store user and password of an HTTP Basic ``Authorization`` header, if any."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return Viewer(user, password) if sep and user else None


def create_app(reader: StoreReader) -> Starlette:
    """The ASGI app over ``reader``'s store (with ``reader.login``, every request signs in as a store user)."""

    def store(request: Request) -> ViewerReader:
        viewer = viewer_of(request)
        if reader.login and viewer is None:
            raise HTTPException(401, "sign in with your store user", headers=_CHALLENGE)
        return reader.as_viewer(viewer)

    def runs(request: Request) -> JSON:
        p = request.query_params
        return JSON(
            api.runs(
                store(request),
                team=p.get("team", ""),
                project=p.get("project", ""),
                status=p.get("status", ""),
                since_s=_since(p.get("since", "")),
            )
        )

    def run(request: Request) -> JSON:
        info = api.run_info(store(request), _one(request, "run"))
        if info is None:
            raise HTTPException(404, f"no run {request.query_params['run']!r} in the store")
        return JSON(info)

    def series(request: Request) -> JSON:
        metrics = request.query_params.getlist("metric") or ["loss"]
        span = (_int(request, "from"), _int(request, "to"))
        return JSON(api.series(store(request), _one(request, "run"), metrics, _int(request, "points"), span))

    def ranks(request: Request) -> JSON:
        span = (_int(request, "from"), _int(request, "to"))
        metric = _one(request, "metric", "step_time_s")
        return JSON(api.ranks(store(request), _one(request, "run"), metric, _int(request, "points"), span))

    def alerts(request: Request) -> JSON:
        return JSON(api.alerts(store(request), _one(request, "run")))

    def compare(request: Request) -> JSON:
        run_ids = request.query_params.getlist("run")
        if not run_ids:
            raise HTTPException(400, "missing query parameter 'run' (give two or more)")
        metrics = request.query_params.getlist("metric") or ["loss"]
        return JSON(api.compare(store(request), run_ids, metrics, _int(request, "points")))

    def health(request: Request) -> JSON:
        return JSON({"ok": True, "store": reader.how})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSON({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def store_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, NotAuthenticated):
            return JSON({"error": one_line(exc)}, status_code=401, headers=_CHALLENGE)
        status = 503 if isinstance(exc, ServiceUnavailable) else 502
        return JSON({"error": one_line(exc)}, status_code=status)

    def page(name: str) -> Any:
        def serve(request: Request) -> FileResponse:
            if reader.login and viewer_of(request) is None:  # the browser asks for the store user here
                raise HTTPException(401, "sign in with your store user", headers=_CHALLENGE)
            return FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

        return serve

    routes = [
        Route("/", page("index.html")),
        Route("/run", page("run.html")),
        Route("/compare", page("compare.html")),
        Route("/api/health", health),
        Route("/api/runs", runs),
        Route("/api/run", run),
        Route("/api/series", series),
        Route("/api/ranks", ranks),
        Route("/api/alerts", alerts),
        Route("/api/compare", compare),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, RankstreamError: store_error})
