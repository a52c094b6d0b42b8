"""Packaging: every package directory is installed under its rankstream.* name."""

from __future__ import annotations

import importlib
import tomllib

from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
MAPPING = {
    "rankstream": "rankstream",
    "producer": "rankstream.producer",
    "stream_jobs": "rankstream.stream_jobs",
    "sinks": "rankstream.sinks",
}


def _package_dirs() -> set[str]:
    names = set()
    for top, dotted in MAPPING.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            names.add(".".join((dotted, *rel)))
    return names


def test_every_package_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    missing = _package_dirs() - listed
    assert not missing, f"add to [tool.setuptools] packages: {sorted(missing)}"


def test_every_package_imports_by_its_rankstream_name() -> None:
    for name in sorted(_package_dirs()):
        module = importlib.import_module(name)
        assert module.__name__ == name


def test_producer_import_pulls_no_stream_or_store_clients() -> None:
    import subprocess
    import sys

    code = (
        "import sys, rankstream.producer; "
        "print([m for m in ('faust', 'aiokafka', 'chdb', 'clickhouse_connect') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_the_runtime_never_imports_the_dev_tools() -> None:
    """The worker, the sink and the producer run in production images: no local launcher, demo or generator."""
    import subprocess
    import sys

    code = (
        "import sys, rankstream.producer, rankstream.stream_jobs.app, rankstream.sinks.worker, "
        "rankstream.sinks.store, rankstream.kafka_admin; "
        "print(sorted(m for m in sys.modules if m.startswith('rankstream.dev')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
