"""Debian's chromium, headless, driven by Playwright (never a downloaded browser), for the UI tests.

``ensure_chromium`` installs the ``chromium`` package with apt-get when it is missing (the
test machines run as root); the test is skipped with the reason when that is impossible.
Every page collects its console errors and failed requests; screenshots go to the test's
tmp dir and are copied to ``.rankstream/artifacts/`` for people to look at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.paths import REPO_ROOT

ARTIFACTS = REPO_ROOT / ".rankstream" / "artifacts"
CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")


def _installed() -> str | None:
    return next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)


def ensure_chromium() -> str:
    """The chromium binary, installed from Debian's packages when missing."""
    found = _installed()
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium is not installed and apt-get (as root) is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True, timeout=600)
    done = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "chromium"], check=False, env=env, capture_output=True, timeout=900
    )
    found = _installed()
    if not found:
        pytest.skip(f"apt-get install chromium failed: {done.stderr.decode(errors='replace')[-300:]}")
    return found


@dataclass
class Page:
    """A Playwright page with what went wrong on it."""

    page: Any
    console_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def open(self, url: str, timeout_ms: int = 60_000) -> None:
        """Load ``url`` and wait until its script says it drew everything (``window.rankstream.ready``)."""
        self.page.goto(url)
        self.page.wait_for_function("window.rankstream && window.rankstream.ready === true", timeout=timeout_ms)

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def screenshot(self, tmp_path: Path, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, ARTIFACTS / path.name)
        return path

    def problems(self) -> list[str]:
        """Console errors, page errors and failed requests (all must be empty)."""
        return [*self.console_errors, *self.failed, *self.js("window.rankstream ? window.rankstream.errors : []")]


@contextmanager
def browser() -> Iterator[Any]:
    """A headless chromium (Debian's) for the whole module."""
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


def watch(page: Page) -> Page:
    """Collect the page's console errors, uncaught exceptions, failed requests and error responses."""
    page.page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    page.page.on("pageerror", lambda exc: page.console_errors.append(f"page error: {exc}"))
    page.page.on("requestfailed", lambda r: page.failed.append(f"{r.url}: {r.failure}"))
    page.page.on("response", lambda r: page.failed.append(f"{r.url}: HTTP {r.status}") if r.status >= 400 else None)
    return page


@contextmanager
def new_page(chromium: Any, width: int = 1400, height: int = 1000) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": width, "height": height})
    page = watch(Page(context.new_page()))
    try:
        yield page
    finally:
        context.close()
