"""The web app without a store: routes, errors, login challenge, parameter inlining (a fake reader)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import pytest
from starlette.testclient import TestClient

from rankstream.ui.app import create_app
from rankstream.ui.reader import NotAuthenticated, QueryFailed, Viewer, ViewerReader


class FakeReader:
    """Stands in for StoreReader: answers the runs queries, records who asked."""

    def __init__(self, login: bool = False, refuse: str | None = None) -> None:
        self.login = login
        self.how = "fake"
        self.refuse = refuse
        self.asked: list[Viewer | None] = []

    def rows(self, sql: str, parameters: dict[str, Any], viewer: Viewer | None = None) -> Sequence[Sequence[Any]]:
        self.asked.append(viewer)
        if self.refuse == "auth":
            raise NotAuthenticated("Code: 516. DB::Exception: wrong password")
        if self.refuse == "query":
            raise QueryFailed("Code: 60. DB::Exception: Unknown table")
        if "FROM rankstream.runs" in sql:
            return [("r1", "nlp", "p", "name", "running", 8, "pretrain", "m", 1.0, None, 2.0)]
        if "last_step" in sql:
            return [("r1", 41)]
        return []

    def as_viewer(self, viewer: Viewer | None) -> ViewerReader:
        return ViewerReader(self, viewer)  # type: ignore[arg-type]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_runs_json_and_pages_are_served() -> None:
    client = TestClient(create_app(FakeReader()))  # type: ignore[arg-type]
    runs = client.get("/api/runs").json()
    assert runs == [
        {
            "run_id": "r1", "team": "nlp", "project": "p", "run_name": "name", "status": "running",
            "world_size": 8, "task_type": "pretrain", "model_name": "m", "started_at": 1.0, "ended_at": None,
            "updated_at": 2.0, "last_step": 41, "firing": 0,
        }
    ]  # fmt: skip
    for path in ("/", "/run?run=r1", "/compare?run=a&run=b", "/static/vendor/uPlot.iife.min.js"):
        assert client.get(path).status_code == 200, path
    assert "MIT" in client.get("/static/vendor/uPlot.LICENSE").text


@pytest.mark.parametrize(
    ("path", "status", "text"),
    [
        ("/api/series", 400, "missing query parameter 'run'"),
        ("/api/runs?since=7x", 400, "since='7x'"),
        ("/api/ranks?run=r&from=abc", 400, "from='abc'"),
        ("/api/compare", 400, "give two or more"),
        ("/api/run?run=nope", 404, "no run 'nope'"),
    ],
)
def test_bad_requests_get_one_line_json_errors(path: str, status: int, text: str) -> None:
    reader = FakeReader()
    reader.rows = lambda sql, parameters, viewer=None: []  # type: ignore[method-assign]
    response = TestClient(create_app(reader)).get(path)  # type: ignore[arg-type]
    assert response.status_code == status and text in response.json()["error"]


def test_a_store_error_is_a_502_with_its_message() -> None:
    response = TestClient(create_app(FakeReader(refuse="query"))).get("/api/runs")  # type: ignore[arg-type]
    assert response.status_code == 502 and response.json() == {"error": "Code: 60. DB::Exception: Unknown table"}


def test_login_challenges_until_the_store_accepts_the_viewer() -> None:
    reader = FakeReader(login=True)
    client = TestClient(create_app(reader))  # type: ignore[arg-type]
    for path in ("/", "/api/runs"):
        response = client.get(path)
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Basic ")
    assert client.get("/api/runs", headers=basic("nlp_ro", "pw:with:colons")).status_code == 200
    assert reader.asked[0] == Viewer("nlp_ro", "pw:with:colons")
    assert client.get("/api/runs", headers={"Authorization": "Basic !!notbase64"}).status_code == 401
    refused = TestClient(create_app(FakeReader(login=True, refuse="auth")))  # type: ignore[arg-type]
    response = refused.get("/api/runs", headers=basic("nlp_ro", "wrong"))
    assert response.status_code == 401 and "wrong password" in response.json()["error"]
