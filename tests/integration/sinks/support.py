"""Helpers for the sink tests: contract-shaped records, a sink subprocess, waiting on the store.

The sink and the store always run in child processes: chDB allows one
engine per process, and the tests read the store the way users do, through
the HTTP interface with the unmodified clickhouse-connect client.
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import clickhouse_connect
from kafka import KafkaConsumer, KafkaProducer

from rankstream.config import Settings
from rankstream.schema import alert_id, dumps, encode_event
from rankstream.sinks.store import portfile, users
from tests.paths import REPO_ROOT

RANKSTREAM = str(Path(sys.executable).parent / "rankstream")
METRICS = ("loss", "lr", "grad_norm", "step_time_s", "data_time_s")


def loss_at(step: int, rank: int) -> float:
    return 2.0 * math.exp(-step / 50) + 0.01 * rank


def mean_loss(step: int, world_size: int) -> float:
    return sum(loss_at(step, r) for r in range(world_size)) / world_size


def _event(run_id: str, rank: int, world_size: int, kind: str, step: int, ts: float, seq: int, **extra: Any) -> dict:
    ev = {
        "v": 1,
        "kind": kind,
        "run_id": run_id,
        "rank": rank,
        "world_size": world_size,
        "local_rank": rank % 8,
        "host": f"node{rank // 8}",
        "step": step,
        "ts": ts,
        "seq": seq,
        "metrics": extra.get("metrics") or {},
        "tags": {"stage": "train"},
    }
    if "meta" in extra:
        ev["meta"] = extra["meta"]
    return ev


def generate_run(run_id: str, world_size: int, steps: int, team: str, t0: float = 1_750_000_000.0) -> list[dict]:
    """Wire events of one run: run_start (team on rank 0 only), steps, heartbeats, run_end."""
    events: list[dict] = []
    for rank in range(world_size):
        own: list[dict] = []
        meta = {"team": team, "run_name": f"{run_id}-name", "project": "p1", "model_name": "m"} if rank == 0 else {}
        own.append(_event(run_id, rank, world_size, "run_start", -1, t0, 0, meta=meta))
        for step in range(steps):
            ts = t0 + 1 + step + rank * 0.001
            metrics = {
                "loss": loss_at(step, rank),
                "lr": 1e-4,
                "grad_norm": 1.0 + rank,
                "step_time_s": 0.5,
                "data_time_s": 0.05 + (0.3 if rank == world_size - 1 else 0.0),
            }
            own.append(_event(run_id, rank, world_size, "step", step, ts, len(own), metrics=metrics))
            if step % 10 == 9:
                own.append(_event(run_id, rank, world_size, "heartbeat", step, ts + 0.5, len(own)))
        own.append(_event(run_id, rank, world_size, "run_end", steps - 1, t0 + steps + 2, len(own)))
        events.extend(own)
    return events


def runs_on_partition(prefix: str, partition: int, n: int = 1, partitions: int = 3) -> list[str]:
    """``n`` run_ids that the producer's default partitioner (murmur2 of the key) puts on ``partition``."""
    from kafka.partitioner.default import murmur2

    found = [f"{prefix}-{i}" for i in range(100 * n * partitions)]
    return [r for r in found if (murmur2(r.encode()) & 0x7FFFFFFF) % partitions == partition][:n]


def expected_counts(events: list[dict]) -> dict[str, int]:
    return {
        "events": len(events),
        "metrics": sum(len(e["metrics"]) for e in events),
    }


def step_record(run_id: str, step: int, world_size: int, t0: float = 1_750_000_000.0) -> dict:
    losses = [loss_at(step, r) for r in range(world_size)]
    mean = sum(losses) / world_size
    return {
        "v": 1,
        "run_id": run_id,
        "step": step,
        "world_size": world_size,
        "ranks_reported": world_size,
        "missing_ranks": [],
        "complete": True,
        "ts_first": t0 + 1 + step,
        "ts_last": t0 + 1 + step + 0.01,
        "metrics": {
            "loss": {
                "mean": mean,
                "min": min(losses),
                "max": max(losses),
                "std": 0.0,
                "argmin": 0,
                "argmax": world_size - 1,
                "n": world_size,
            },
            "data_time_s": {
                "mean": 0.1,
                "min": 0.05,
                "max": 0.35,
                "std": 0.1,
                "argmin": 0,
                "argmax": world_size - 1,
                "n": world_size,
            },
        },
        "nonfinite": {},
    }


def alert_record(run_id: str, team: str, rule: str, step: int, ranks: list[int], t0: float = 1_750_000_000.0) -> dict:
    return {
        "v": 1,
        "alert_id": alert_id(run_id, rule, step, ranks),
        "run_id": run_id,
        "team": team,
        "rule": rule,
        "severity": "warning",
        "step": step,
        "ranks": ranks,
        "ts": t0 + 1 + step,
        "message": f"{rule} at step {step}",
        "evidence": {"value": 1.5, "threshold": 1.0},
    }


def produce(settings: Settings, topic: str, payloads: Iterable[tuple[bytes, bytes]]) -> int:
    producer = KafkaProducer(acks="all", linger_ms=5, **settings.kafka_python_kwargs())
    n = 0
    for key, value in payloads:
        producer.send(topic, key=key, value=value)
        n += 1
    producer.flush(timeout=60)
    producer.close()
    return n


def produce_events(settings: Settings, events: list[dict]) -> int:
    return produce(settings, settings.topics.events, ((e["run_id"].encode(), encode_event(e)) for e in events))


def produce_records(settings: Settings, topic: str, records: list[dict]) -> int:
    return produce(settings, topic, ((r["run_id"].encode(), dumps(r)) for r in records))


def read_topic(settings: Settings, topic: str, expected: int, timeout_s: float = 60) -> list[Any]:
    consumer = KafkaConsumer(
        topic, auto_offset_reset="earliest", enable_auto_commit=False, **settings.kafka_python_kwargs()
    )
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            out.extend(batch)
    consumer.close()
    return out


def wait_until(condition: Callable[[], Any], what: str, timeout_s: float = 90.0, interval_s: float = 0.2) -> Any:
    """Poll ``condition`` until truthy (a liveness wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # the store may be starting
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class SinkProcess:
    """``rankstream sink`` as a child process with its log captured to a file."""

    def __init__(self, settings: Settings, dsn: str, log_path: Path, *extra: str) -> None:
        self.dsn = dsn
        self.log_path = log_path
        self.args = [
            RANKSTREAM,
            "sink",
            "--dsn",
            dsn,
            "--bootstrap",
            settings.bootstrap_servers,
            "--prefix",
            settings.topic_prefix,
            "--state-dir",
            settings.state_dir,
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SinkProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, store_path: Path) -> tuple[str, int]:
        def ready() -> tuple[str, int] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"sink exited with {self.proc.returncode}: {self.log()[-2000:]}")
            return portfile.find_server(store_path)

        return wait_until(ready, "the sink's HTTP interface", timeout_s=60)

    def wait_log(self, text: str, timeout_s: float = 60) -> None:
        wait_until(lambda: text in self.log(), f"{text!r} in the sink log", timeout_s=timeout_s)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout_s)


# The admin password of every store these tests serve (sinks and stand-in servers inherit the environment).
os.environ.setdefault(users.ENV_PASSWORD, secrets.token_urlsafe(16))


def http_client(host: str, port: int) -> Any:
    return clickhouse_connect.get_client(host=host, port=port, password=os.environ[users.ENV_PASSWORD])


def server_dsn(port: int) -> str:
    """The DSN a sink writes a stand-in store server (:func:`start_store`) through, as its admin."""
    return f"http://default:{os.environ[users.ENV_PASSWORD]}@127.0.0.1:{port}"


def count(client: Any, table: str, where: str = "") -> int:
    return int(client.command(f"SELECT count() FROM rankstream.{table} FINAL {where}"))


def stored_counts(client: Any) -> dict[str, int]:
    """What :func:`expected_counts` describes, as the store has it now (FINAL).

    Wait on both tables: a batch's ``events`` rows become visible a moment before its ``metrics`` rows.
    """
    return {"events": count(client, "events"), "metrics": count(client, "metrics")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_store(path: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rankstream.sinks.store.httpd", "--path", str(path), "--port", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    out.close()
    return proc


COOKBOOK = REPO_ROOT / "docs" / "sql-cookbook.md"


def cookbook_entries() -> list[tuple[str, bool, str]]:
    """``(name, may_be_empty, sql)`` of every query in docs/sql-cookbook.md, in order."""
    import re

    text = COOKBOOK.read_text()
    pattern = re.compile(r"<!-- query: ([a-z0-9-]+)( \(may be empty\))? -->\s*```sql\n(.*?)```", re.DOTALL)
    return [(m.group(1), bool(m.group(2)), m.group(3).strip()) for m in pattern.finditer(text)]


def cookbook_queries() -> dict[str, str]:
    return {name: sql for name, _, sql in cookbook_entries()}
