"""The worker's Faust patches: none on import, once on apply, refused for versions they were not written for."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from rankstream.errors import ConfigError
from rankstream.stream_jobs import faust_patches
from rankstream.stream_jobs.runner import own_log_level

IMPORT_THEN_APPLY = """
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread as Thread

drain, create = Consumer._drain_messages, Thread._create_worker_consumer
import rankstream.stream_jobs.app, rankstream.stream_jobs.batch_drain, rankstream.stream_jobs.runner
from rankstream.stream_jobs import faust_patches

assert Consumer._drain_messages is drain and Thread._create_worker_consumer is create, "patched on import"
assert not faust_patches.applied()
faust_patches.apply()
patched = Consumer._drain_messages
assert patched is not drain and Thread._create_worker_consumer is not create, "apply() patched nothing"
faust_patches.apply()
assert Consumer._drain_messages is patched, "a second apply() patched again"
print("ok")
"""


def test_importing_patches_nothing_and_apply_patches_once() -> None:
    done = subprocess.run([sys.executable, "-c", IMPORT_THEN_APPLY], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_installed_versions_are_the_patched_ones() -> None:
    faust_patches.check_versions()


@pytest.mark.parametrize(("dist", "version"), [("faust-streaming", "0.16.0"), ("aiokafka", "0.13.2")])
def test_other_versions_are_refused_with_one_line(dist: str, version: str) -> None:
    installed = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", dist: version}
    with pytest.raises(ConfigError) as raised:
        faust_patches.check_versions(installed.__getitem__)
    message = str(raised.value)
    assert "\n" not in message and f"{dist} {version}" in message


def test_patch_releases_within_the_pinned_minor_are_accepted() -> None:
    faust_patches.check_versions({"faust-streaming": "0.15.9", "aiokafka": "0.14.1"}.__getitem__)


def test_the_worker_lines_show_at_the_default_level_and_follow_louder_or_quieter_ones() -> None:
    assert own_log_level(logging.WARNING) == logging.INFO
    assert own_log_level(logging.DEBUG) == logging.DEBUG
    assert own_log_level(logging.ERROR) == logging.ERROR


def test_the_runner_shows_the_worker_info_lines_and_no_other_info_at_warning(tmp_path: Path) -> None:
    import faust

    from rankstream.stream_jobs.runner import WORKER_LOGGER, StreamWorkerRunner

    runner = StreamWorkerRunner(faust.App("t-runner", datadir=str(tmp_path)))
    assert runner.spinner is None
    handler = logging.StreamHandler(io.StringIO())
    handler.setLevel(logging.WARNING)  # as mode's logging setup leaves it
    root = logging.Logger("fake-root")
    root.addHandler(handler)
    own = logging.getLogger(WORKER_LOGGER)
    before = own.level
    try:
        runner.on_setup_root_logger(root, logging.WARNING)
        assert own.getEffectiveLevel() == logging.INFO
    finally:
        own.setLevel(before)

    def shown(name: str, level: int) -> bool:
        record = logging.LogRecord(name, level, __file__, 0, "line", None, None)
        return record.levelno >= handler.level and bool(handler.filter(record))

    assert shown(WORKER_LOGGER, logging.INFO) and shown(WORKER_LOGGER, logging.WARNING)
    assert not shown("aiokafka", logging.INFO) and not shown("faust.app", logging.INFO)
    assert shown("aiokafka", logging.WARNING)
