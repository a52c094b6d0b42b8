"""Helpers for tests that run real stream workers against the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from rankstream.config import Settings
from rankstream.schema import dumps, loads
from tests.corekit import replay  # noqa: F401  (re-exported: the integration tests import it from here)


def produce(settings: Settings, messages: Iterable[dict | bytes], key: bytes | None = None) -> int:
    """Send wire events (dicts) or raw bytes to the events topic, keyed by run_id."""
    producer = KafkaProducer(linger_ms=5, **settings.kafka_python_kwargs())
    count = 0
    for message in messages:
        if isinstance(message, bytes):
            producer.send(settings.topics.events, key=key, value=message)
        else:
            producer.send(settings.topics.events, key=message["run_id"].encode(), value=dumps(message))
        count += 1
    producer.flush(60)
    producer.close()
    return count


class WorkerProcess:
    """A `rankstream worker` subprocess with its log in a file; stopped by its PID."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        *,
        group: str | None = None,
        entry: list[str] | None = None,
        rules: Path | None = None,
        extra_args: Iterable[str] = (),
    ) -> None:
        """``entry`` replaces ``python -m rankstream.cli`` (a wrapper script that injects a fault); ``rules``
        is a rules YAML (``--rules``)."""
        cmd = [
            *(entry or [sys.executable, "-m", "rankstream.cli"]),
            "worker",
            "--bootstrap",
            settings.bootstrap_servers,
            "--prefix",
            settings.topic_prefix,
            "--state-dir",
            settings.state_dir,
            "--session-timeout",
            "6",
        ]
        if group:
            cmd += ["--group", group]
        if rules is not None:
            cmd += ["--rules", str(rules)]
        cmd += list(extra_args)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@dataclass(frozen=True)
class Published:
    """A record read back with the wall time its producer stamped on it (Kafka CreateTime, seconds)."""

    at: float
    value: dict


def collect_published(
    settings: Settings,
    topic: str,
    done: Callable[[list[Published]], bool],
    timeout_s: float = 120.0,
) -> list[Published]:
    """:func:`collect` with each record's publication time: how late the worker published it."""
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", **settings.kafka_python_kwargs())
    records: list[Published] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(Published(r.timestamp / 1000.0, loads(r.value)) for r in batch)
            if done(records):
                break
    finally:
        consumer.close()
    return records


def collect(
    settings: Settings,
    topic: str,
    done: Callable[[list[dict]], bool],
    timeout_s: float = 120.0,
) -> list[dict]:
    """Read ``topic`` from the beginning until ``done(records)`` or the timeout."""
    published = collect_published(settings, topic, lambda records: done([r.value for r in records]), timeout_s)
    return [r.value for r in published]


def at_wall_time(events: list[dict], start: float) -> list[dict]:
    """``events`` (in ts order) shifted so that the first one is stamped ``start`` (e.g. ``time.time()``)."""
    shift = start - events[0]["ts"]
    return [{**e, "ts": e["ts"] + shift} for e in events]


def produce_in_real_time(settings: Settings, events: Iterable[dict]) -> list[float]:
    """Send each event (in ts order) once the wall clock reaches its ``ts``, as a live job would; returns
    the wall time at which each was handed to the producer. The pauses pace the job, they synchronise nothing."""
    producer = KafkaProducer(linger_ms=5, **settings.kafka_python_kwargs())
    sent: list[float] = []
    try:
        for event in events:
            ahead = event["ts"] - time.time()
            if ahead > 0:
                time.sleep(ahead)
            producer.send(settings.topics.events, key=event["run_id"].encode(), value=dumps(event))
            sent.append(time.time())
        producer.flush(60)
    finally:
        producer.close()
    return sent


def step_keys(records: Iterable[dict]) -> set[tuple[str, int]]:
    return {(r["run_id"], r["step"]) for r in records}


def committed_offsets(settings: Settings, group: str, topic: str) -> int:
    """The sum of ``group``'s committed offsets on ``topic`` (0 while nothing is committed)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**settings.kafka_python_kwargs())
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


def wait_committed(settings: Settings, group: str, topic: str, at_least: int, timeout_s: float = 60.0) -> int:
    """Wait until ``group`` committed at least ``at_least`` offsets on ``topic`` in all; the sum."""
    deadline = time.monotonic() + timeout_s
    total = 0
    while time.monotonic() < deadline:
        total = committed_offsets(settings, group, topic)
        if total >= at_least:
            return total
        time.sleep(0.25)
    raise AssertionError(f"{group} committed {total} offsets on {topic}, expected >= {at_least} in {timeout_s:.0f}s")


def wait_group_stable(settings: Settings, group: str, members: int, timeout_s: float = 60.0) -> None:
    """Wait until consumer group ``group`` is Stable with exactly ``members`` members (the partitions are split)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**settings.kafka_python_kwargs())
    deadline = time.monotonic() + timeout_s
    seen: tuple[str, int] = ("", 0)
    try:
        while time.monotonic() < deadline:
            described = admin.describe_groups([group]).get(group) or {}
            seen = (str(described.get("group_state", "")), len(described.get("members") or []))
            if seen == ("Stable", members):
                return
            time.sleep(0.25)
    finally:
        admin.close()
    raise AssertionError(f"group {group} is {seen[0] or 'unknown'} with {seen[1]} member(s), not Stable with {members}")
