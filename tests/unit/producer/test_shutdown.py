"""Incarnations, run_end reasons and the SIGTERM/SIGINT handlers, without a broker.

The broker is a transport that refuses every connect, so everything a reporter
emits ends up in its spool, where the tests read it back (every seq counted).
Signal tests send real signals: to this process (handlers restored afterwards)
or to a subprocess that must die by the signal it was sent.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from rankstream.config import Settings
from rankstream.producer import Reporter
from rankstream.producer.shutdown import ChainedHandler
from rankstream.producer.spool import rank_dir
from rankstream.schema import decode_event
from tests.paths import REPO_ROOT

WAIT_S = 10.0


class RefusingTransport:
    """A broker that is never reachable: every event is spooled (and close() does not wait for a reconnect)."""

    connect_timeout_s = 60.0

    def connect(self, client_id: str) -> Any:
        raise ConnectionRefusedError("broker down")

    def release(self, producer: Any, timeout: float) -> None:  # pragma: no cover - never connected
        pass


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(bootstrap_servers="down:9092", state_dir=str(tmp_path / "state"), topic_prefix="unit")


@pytest.fixture
def restore_handlers() -> Iterator[None]:
    """Whatever a test installs for SIGTERM/SIGINT is undone afterwards (pytest keeps running here)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def reporter(settings: Settings, run_id: str, rank: int = 0, **kwargs: Any) -> Reporter:
    kwargs.setdefault("heartbeat_s", 0)
    return Reporter(
        run_id,
        settings=settings,
        rank=rank,
        world_size=max(rank + 1, 1),
        max_events_per_s=0,
        transport=RefusingTransport(),
        **kwargs,
    )


def spooled(spool_root: Path, run_id: str, rank: int = 0) -> list[dict]:
    events = []
    for seg in sorted(rank_dir(spool_root, run_id, rank).glob("seg-*.log")):
        events += [decode_event(line) for line in seg.read_bytes().splitlines()]
    return events


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.005)


def run_end_tags(events: list[dict]) -> list[dict]:
    return [e["tags"] for e in events if e["kind"] == "run_end"]


# ----------------------------------------------------------------- incarnations


def test_every_event_carries_the_reporters_inc_and_a_relaunch_gets_a_new_one(settings: Settings) -> None:
    first = reporter(settings, "relaunched", heartbeat_s=0.05)
    for step in range(20):
        first.log(step, loss=1.0)
    wait_until(lambda: first.stats["enqueued"] >= 24, "a few heartbeats were drawn")
    first.close(timeout=0.5)
    second = reporter(settings, "relaunched")  # same run, same rank: a relaunch
    for step in range(10, 15):
        second.log(step, loss=1.0)
    second.close(timeout=0.5)

    events = spooled(settings.spool_path, "relaunched")
    by_inc: dict[str, list[int]] = {}
    for e in events:
        by_inc.setdefault(e["inc"], []).append(e["seq"])
    assert list(by_inc) == [first.inc, second.inc] and first.inc != second.inc
    assert len(first.inc) == 12 and all(c in "0123456789abcdef" for c in first.inc)
    assert by_inc[first.inc] == list(range(first.stats["enqueued"]))  # seq from 0, per inc
    assert by_inc[second.inc] == list(range(7))  # run_start, 5 steps, run_end


# ----------------------------------------------------------------- run_end reasons


def test_close_reasons_of_a_clean_close_and_of_a_with_block_that_raised(settings: Settings) -> None:
    clean = reporter(settings, "clean")
    clean.log(0, loss=1.0)
    clean.close(timeout=0.2)
    with pytest.raises(ZeroDivisionError), reporter(settings, "raised") as r:
        r.log(0, loss=1.0)
        raise ZeroDivisionError
    assert run_end_tags(spooled(settings.spool_path, "clean")) == [{"status": "finished", "reason": "normal"}]
    assert run_end_tags(spooled(settings.spool_path, "raised")) == [{"status": "failed", "reason": "ZeroDivisionError"}]


_CHILD = textwrap.dedent(
    """
    import signal, sys, time
    from rankstream.config import Settings
    from rankstream.producer import Reporter

    class Down:
        connect_timeout_s = 60.0
        def connect(self, client_id):
            raise ConnectionRefusedError("broker down")
        def release(self, producer, timeout):
            pass

    state_dir, mode = sys.argv[1], sys.argv[2]
    settings = Settings(bootstrap_servers="down:9092", topic_prefix="unit", state_dir=state_dir)
    if mode == "python_handler":  # a framework's handler, installed before the reporter, exits with 7
        def framework(signum, frame):
            print("framework", signum, frame is not None, flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, framework)
    r = Reporter("child", settings=settings, rank=0, world_size=1, max_events_per_s=0, heartbeat_s=0,
                 transport=Down(), shutdown_timeout_s=1.0)
    for step in range(50):
        r.log(step, loss=1.0)
    if mode == "raise":
        raise ValueError("the training loop failed")
    print("ready", flush=True)
    while True:
        time.sleep(0.01)
    """
)


def run_child(tmp_path: Path, mode: str, sig: signal.Signals | None) -> tuple[subprocess.CompletedProcess, list[dict]]:
    state_dir = tmp_path / f"child-{mode}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(state_dir), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        if sig is not None:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # pragma: no cover - only when an assertion above failed
            proc.kill()
            proc.wait(10)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done, spooled(state_dir / "spool", "child")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_with_the_default_action_spools_run_end_and_still_kills_the_process(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # SIGTERM's default action is to die; SIGINT's is Python's KeyboardInterrupt, which (uncaught) dies by SIGINT too.
    done, events = run_child(tmp_path, "default", sig)
    assert done.returncode == -sig, (done.returncode, done.stderr[-2000:])
    assert [e["seq"] for e in events] == list(range(52))  # run_start, 50 steps, run_end: nothing lost
    assert run_end_tags(events) == [{"status": "terminated", "reason": sig.name}]
    assert events[-1]["kind"] == "run_end" and events[-1]["step"] == 49


def test_a_previous_python_handler_runs_after_run_end_and_decides_the_exit(tmp_path: Path) -> None:
    done, events = run_child(tmp_path, "python_handler", signal.SIGTERM)
    assert done.returncode == 7, done.stderr[-2000:]
    assert done.stdout.splitlines() == [f"framework {int(signal.SIGTERM)} True"]  # called once, with a frame
    assert [e["seq"] for e in events] == list(range(52))
    assert run_end_tags(events) == [{"status": "terminated", "reason": "SIGTERM"}]


def test_an_uncaught_exception_is_the_reason_at_exit(tmp_path: Path) -> None:
    done, events = run_child(tmp_path, "raise", None)
    assert done.returncode == 1 and "ValueError" in done.stderr
    assert [e["seq"] for e in events] == list(range(52))
    assert run_end_tags(events) == [{"status": "failed", "reason": "ValueError"}]


# ----------------------------------------------------------------- handlers in this process


def test_previous_handler_called_once_after_run_end_and_every_reporter_closed_once(
    settings: Settings, restore_handlers: None
) -> None:
    calls: list[tuple[int, FrameType | None, list[dict]]] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        calls.append((signum, frame, spooled(settings.spool_path, "sig-a") + spooled(settings.spool_path, "sig-b")))

    signal.signal(signal.SIGTERM, previous)
    a = reporter(settings, "sig-a", shutdown_timeout_s=0.3)
    b = reporter(settings, "sig-b", shutdown_timeout_s=0.3)  # a second reporter: our handler is not installed twice
    handler = signal.getsignal(signal.SIGTERM)
    assert isinstance(handler, ChainedHandler) and handler.previous is previous
    for step in range(10):
        a.log(step, loss=1.0)
        b.log(step, loss=2.0)

    signal.raise_signal(signal.SIGTERM)
    wait_until(lambda: bool(calls), "the previous handler ran")
    handler(signal.SIGTERM, None)  # called again (e.g. by a handler chaining to ours): closes nothing twice

    assert [(signum, frame is not None) for signum, frame, _ in calls] == [
        (signal.SIGTERM, True),
        (signal.SIGTERM, False),
    ]
    seen_by_previous = calls[0][2]
    assert run_end_tags(seen_by_previous) == [{"status": "terminated", "reason": "SIGTERM"}] * 2  # spooled first
    for run_id, r in (("sig-a", a), ("sig-b", b)):
        events = spooled(settings.spool_path, run_id)
        assert [e["seq"] for e in events] == list(range(12)) == list(range(r.stats["enqueued"]))
        assert run_end_tags(events) == [{"status": "terminated", "reason": "SIGTERM"}]


def test_a_handler_installed_after_ours_that_chains_to_ours_keeps_working(
    settings: Settings, restore_handlers: None
) -> None:
    order: list[str] = []
    signal.signal(signal.SIGINT, lambda signum, frame: order.append("original"))
    r = reporter(settings, "chained", shutdown_timeout_s=0.3)
    r.log(0, loss=1.0)
    ours = signal.getsignal(signal.SIGINT)
    assert callable(ours)

    def framework(signum: int, frame: FrameType | None) -> None:  # e.g. Lightning: its own work, then the old one
        order.append("framework")
        ours(signum, frame)

    signal.signal(signal.SIGINT, framework)
    signal.raise_signal(signal.SIGINT)
    wait_until(lambda: "original" in order, "the signal went all the way down the chain")
    assert order == ["framework", "original"]
    assert run_end_tags(spooled(settings.spool_path, "chained")) == [{"status": "terminated", "reason": "SIGINT"}]


def test_handle_signals_false_installs_nothing(settings: Settings, restore_handlers: None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    r = reporter(settings, "no-signals", handle_signals=False)
    r.log(0, loss=1.0)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    r.close(timeout=0.2)


def test_no_handler_from_another_thread_or_for_an_ignored_signal(settings: Settings, restore_handlers: None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job: SIGINT would not end it, so not the reporter
    made: list[Reporter] = []
    thread = threading.Thread(target=lambda: made.append(reporter(settings, "in-thread")))
    thread.start()
    thread.join(WAIT_S)
    assert made and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # created off the main thread: no handler
    made[0].close(timeout=0.2)
    r = reporter(settings, "main-thread")
    assert isinstance(signal.getsignal(signal.SIGTERM), ChainedHandler)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    r.close(timeout=0.2)
