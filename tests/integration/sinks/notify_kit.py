"""Pieces of the notifier's real-part tests and benchmark: AlertManager from the example config, a notifier
thread, alert records on the real broker, and waiting on observable state."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kafka import KafkaProducer

from rankstream.config import Settings
from rankstream.dev.alertmanager import AlertManagerProcess, local_config
from rankstream.schema import dumps
from rankstream.sinks.notify.config import NotifyConfig
from rankstream.sinks.notify.worker import Notifier

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def alertmanager(tmp_path: Path, hooks_url: str, **timers: str) -> Iterator[AlertManagerProcess]:
    config = local_config(tmp_path / "alertmanager.yml", hooks_url, **timers)
    with AlertManagerProcess(config, tmp_path / "am", free_port()) as am:
        yield am


@contextmanager
def notifier_running(settings: Settings, config: NotifyConfig, **kwargs: Any) -> Iterator[Notifier]:
    """A :class:`Notifier` on a thread, stopped (flush, commit) at the end; its errors fail the test."""
    notifier = Notifier(settings, config, **kwargs)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            notifier.run(stop)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=run, name="notifier", daemon=True)
    thread.start()
    try:
        wait_for(lambda: notifier.ready.is_set() or bool(errors), 30, "the notifier to start")
        yield notifier
    finally:
        stop.set()
        thread.join(60)
        if errors:
            raise errors[0]


def produce_alerts(settings: Settings, alerts: Iterable[dict[str, Any] | bytes]) -> None:
    producer = KafkaProducer(linger_ms=5, **settings.kafka_python_kwargs())
    for alert in alerts:
        if isinstance(alert, bytes):
            producer.send(settings.topics.alerts, key=b"bad", value=alert)
        else:
            producer.send(settings.topics.alerts, key=alert["run_id"].encode(), value=dumps(alert))
    producer.flush(30)
    producer.close()


def wait_for(
    probe: Callable[[], T],
    timeout_s: float,
    what: str,
    interval_s: float = 0.2,
    detail: Callable[[], object] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy (returned) or fail after ``timeout_s``
    (the message ends with ``detail()``: what was seen instead)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}{seen}")
        time.sleep(interval_s)
