"""`rankstream demo`: real Kafka, the stream worker, the sink with the embedded store,
and a real 4-rank PyTorch job with injected faults, shown live, then queried with SQL.

Everything started here is stopped here (by PID), also on failure, unless --keep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rankstream.config import Settings
from rankstream.dev.demo.dashboard import DemoDashboard
from rankstream.dev.demo.notifications import DemoNotifications
from rankstream.dev.demo.train import DemoJob, launch
from rankstream.errors import EXIT_FAILURE, EXIT_SERVICE, OperationFailed

DEMO_RULES = Path(__file__).with_name("demo-rules.yaml")
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


class DemoError(OperationFailed):
    """A demo failure with a one-line explanation; ``service`` marks a missing or broken service (exit 3)."""

    def __init__(self, message: str, *, service: bool = False) -> None:
        super().__init__(message)
        self.service = service
        self.exit_code = EXIT_SERVICE if service else EXIT_FAILURE


@dataclass
class LiveModel:
    """What the consumer thread has seen on .steps and .alerts (shared with the renderer)."""

    steps: deque[dict] = field(default_factory=lambda: deque(maxlen=10))
    step_count: int = 0
    last_step: int = -1
    alerts: deque[dict] = field(default_factory=lambda: deque(maxlen=12))
    rules: Counter[str] = field(default_factory=Counter)
    alert_ids: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A rankstream subprocess (worker or sink) with its log file, stopped by PID."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rankstream.cli", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def last_line(self) -> str:
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        return (errors or lines or ["no output"])[-1][:200]

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class Demo:
    def __init__(
        self, settings: Settings, *, keep: bool, steps: int, ranks: int, console: Console, max_wait_s: float = 60.0
    ) -> None:
        self.base = settings
        self.keep = keep
        self.console = console
        self.max_wait_s = max_wait_s
        stamp = time.strftime("%Y%m%d%H%M%S")
        self.settings = settings.with_overrides(
            topic_prefix=f"demo{stamp}",
            bootstrap_servers=f"127.0.0.1:{settings.kafka_port}",
            partitions=3,
        )
        self.run_id = f"demo-{stamp}-{uuid.uuid4().hex[:6]}"
        self.job = DemoJob(run_id=self.run_id, settings=self.settings, world_size=ranks, steps=steps)
        self.model = LiveModel()
        self.services: list[Service] = []
        self.stop_consuming = threading.Event()
        self.started_broker = False
        self.store_path = self.settings.state_path / "store"
        self.notifications = DemoNotifications(self.settings.state_path / "notify")
        self.dashboard = DemoDashboard()

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        from rankstream.dev.stack import broker_status, start_broker, stop_broker
        from rankstream.errors import ServiceUnavailable
        from rankstream.kafka_admin import ensure_topics

        t0 = time.monotonic()
        if shutil.which("java") is None:
            raise DemoError(
                "Java 17+ is needed for the local Kafka broker: install openjdk-17-jre-headless", service=True
            )
        try:
            already = broker_status(self.settings).ready
            with self.console.status("starting Kafka (KRaft, 127.0.0.1)..."):
                status = start_broker(self.settings)
            self.started_broker = not already
            self.console.print(f"[green]✓[/] Kafka {status.bootstrap} ({status.detail})")
            ensure_topics(self.settings)
            self._start_services()
            result = self._run_job()
            self._show_sql()
            self.notifications.show(self.console, self.settings, self.run_id, self.services[-1].alive)
        except ServiceUnavailable as exc:
            raise DemoError(str(exc), service=True) from None
        finally:
            self.stop_consuming.set()
            self.notifications.stop()
            if not self.keep:
                self.dashboard.stop()
                for service in self.services:
                    service.stop()
                if self.started_broker:
                    stop_broker(self.settings)
        rules = sorted(self.model.rules)
        self.console.print(
            f"\n[bold]demo finished in {time.monotonic() - t0:.0f}s[/]: {self.model.step_count} aligned steps, "
            f"{len(self.model.alert_ids)} alerts of {len(rules)} rules ({', '.join(rules)})"
        )
        if self.keep:
            self.console.print(
                f"--keep: Kafka, worker and sink still run; stop them with `rankstream stack down --state-dir "
                f"{self.settings.state_dir}` and `kill {' '.join(str(s.proc.pid) for s in self.services)}`"
            )
            if self.dashboard.note():
                self.console.print(f"--keep: {self.dashboard.note()} keeps serving; stop it with its kill")
        if len(rules) < 4:
            raise DemoError(f"expected alerts of at least 4 rules, saw {len(rules)}: {rules} (logs: {self._log_dir()})")
        return result

    def _log_dir(self) -> Path:
        path = self.settings.state_path / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _common_args(self) -> list[str]:
        s = self.settings
        return ["--bootstrap", s.bootstrap_servers, "--prefix", s.topic_prefix, "--state-dir", str(s.state_path)]

    def _start_services(self) -> None:
        from rankstream.sinks.store import portfile

        if portfile.find_server(self.store_path) is not None:
            raise DemoError(
                f"a sink already owns the store {self.store_path}: stop it (see `rankstream sql` ) or use --state-dir"
            )
        logs = self._log_dir()
        worker = Service(
            "worker", ["worker", *self._common_args(), "--rules", str(DEMO_RULES), "--session-timeout", "6"], logs
        )
        sink = Service(
            "sink", ["sink", *self._common_args(), "--dsn", f"chdb://{self.store_path}", "--http-port", "0"], logs
        )
        s = self.settings
        notify_args = [*self.notifications.start(), "--bootstrap", s.bootstrap_servers, "--prefix", s.topic_prefix]
        self.services = [worker, sink, Service("notify", notify_args, logs)]
        with self.console.status("starting the stream worker and the sink (embedded ClickHouse)..."):
            deadline = time.monotonic() + 90
            while portfile.find_server(self.store_path) is None:
                for service in self.services:
                    if not service.alive():
                        raise DemoError(f"{service.name} exited at start-up: {service.last_line()}")
                if time.monotonic() > deadline:
                    raise DemoError(f"the sink did not start serving within 90s: {sink.last_line()}")
                time.sleep(0.3)
        host, port = portfile.find_server(self.store_path) or ("?", 0)
        self.console.print(f"[green]✓[/] stream worker pid {worker.proc.pid} (log {worker.log_path})")
        self.console.print(
            f"[green]✓[/] sink pid {sink.proc.pid}, store {self.store_path}, SQL on http://{host}:{port}"
        )
        self.console.print(f"[green]✓[/] {self.notifications.describe()}")
        self.dashboard.start(self.store_path, logs, self.console)

    # ------------------------------------------------------------------ job + live view

    def _consume(self) -> None:
        from kafka import KafkaConsumer

        from rankstream.schema import loads

        topics = self.settings.topics
        consumer = KafkaConsumer(
            topics.steps, topics.alerts, auto_offset_reset="earliest", **self.settings.kafka_python_kwargs()
        )
        try:
            while not self.stop_consuming.is_set():
                for tp, records in consumer.poll(timeout_ms=200).items():
                    with self.model.lock:
                        for record in records:
                            value = loads(record.value)
                            if value.get("run_id") != self.run_id:
                                continue
                            if tp.topic == topics.steps:
                                self.model.steps.append(value)
                                self.model.step_count += 1
                                self.model.last_step = max(self.model.last_step, value["step"])
                            elif value["alert_id"] not in self.model.alert_ids:
                                self.model.alert_ids.add(value["alert_id"])
                                self.model.alerts.append(value)
                                self.model.rules[value["rule"]] += 1
        finally:
            consumer.close()

    def _render(self, phase: str, started: float) -> Group:
        m = self.model
        with m.lock:
            steps = list(m.steps)
            alerts = list(m.alerts)
            rules = dict(m.rules)
            last, count = m.last_step, m.step_count
        head = Text.assemble(
            ("run ", "dim"),
            (self.run_id, "bold"),
            (f"   {self.job.world_size} ranks (gloo, CPU)   step {max(last, 0)}/{self.job.steps}", ""),
            (f"   {count} aligned steps   {time.monotonic() - started:.0f}s   ", ""),
            (phase, "italic cyan"),
        )
        table = Table(title="aligned steps (newest last)", expand=True, title_justify="left")
        for col in ("step", "ranks", "loss mean", "loss min..max (rank)", "data_time max (rank)", "compute max (rank)"):
            table.add_column(col, justify="right")
        for s in steps[-8:]:
            loss = s["metrics"].get("loss")
            data = s["metrics"].get("data_time_s")
            comp = s["metrics"].get("compute_time_s")
            nonfinite = s.get("nonfinite", {}).get("loss")
            table.add_row(
                str(s["step"]),
                f"{s['ranks_reported']}/{s['world_size']}"
                + ("" if s["complete"] else f" missing {s['missing_ranks']}"),
                f"{loss['mean']:.4f}" if loss else "-",
                (f"{loss['min']:.3f}..{loss['max']:.3f} (r{loss['argmax']})" if loss else "-")
                + (f" [red]{nonfinite} NaN[/]" if nonfinite else ""),
                f"{data['max'] * 1000:.0f} ms (r{data['argmax']})" if data else "-",
                f"{comp['max'] * 1000:.0f} ms (r{comp['argmax']})" if comp else "-",
            )
        alert_table = Table(title=f"alerts ({sum(rules.values())}: {rules})", expand=True, title_justify="left")
        for col in ("severity", "rule", "step", "ranks", "message"):
            alert_table.add_column(col, overflow="fold")
        for a in alerts[-10:]:
            alert_table.add_row(
                Text(a["severity"], style=SEVERITY_STYLE.get(a["severity"], "")),
                a["rule"],
                str(a["step"]),
                ",".join(map(str, a["ranks"])),
                a["message"],
            )
        return Group(Panel(head), table, alert_table)

    def _run_job(self) -> int:
        job = self.job.__class__(**{**self.job.__dict__, "master_port": _free_port()})
        consumer = threading.Thread(target=self._consume, name="demo-live", daemon=True)
        consumer.start()
        started = time.monotonic()
        context = launch(job)
        job_done_at: float | None = None
        with Live(self._render("training", started), console=self.console, refresh_per_second=4) as live:
            while True:
                frozen = context.processes[job.faults.kill_rank]
                others = [p for i, p in enumerate(context.processes) if i != job.faults.kill_rank]
                if frozen.is_alive() and not any(p.is_alive() for p in others):
                    frozen.kill()  # the frozen rank is killed once the others gave up on it
                    frozen.join(10)
                alive = [p for p in context.processes if p.is_alive()]
                if not alive and job_done_at is None:
                    job_done_at = time.monotonic()
                with self.model.lock:
                    liveness_seen = {"rank_silent", "rank_hung"} & set(self.model.rules)
                phase = "training" if job_done_at is None else "job ended; waiting for the last alerts"
                live.update(self._render(phase, started))
                if job_done_at is not None and (liveness_seen or time.monotonic() - job_done_at > self.max_wait_s):
                    break
                if time.monotonic() - started > 240:
                    break
                for service in self.services:
                    if not service.alive():
                        raise DemoError(f"{service.name} died: {service.last_line()}")
                time.sleep(0.25)
            time.sleep(2.0)  # let the last alerts arrive
            live.update(self._render("done", started))
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join(10)
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(10)
        codes = [p.exitcode for p in context.processes]
        self.console.print(
            f"training job exit codes per rank: {codes} (rank {job.faults.kill_rank} was killed on purpose)"
        )
        return 0

    # ------------------------------------------------------------------ SQL

    def _wait_for_store(self) -> None:
        from rankstream.sinks.store import portfile

        server = portfile.find_server(self.store_path)
        if server is None:
            raise DemoError(f"the sink stopped serving the store: {self.services[1].last_line()}")
        from rankstream.sinks.store.query import local_client

        client = local_client(self.store_path, server)
        want = self.model.step_count
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = client.query(
                "SELECT count() FROM rankstream.steps FINAL WHERE run_id = {r:String}", parameters={"r": self.run_id}
            ).result_rows[0][0]
            alerts = client.query(
                "SELECT count() FROM rankstream.alerts FINAL WHERE run_id = {r:String}", parameters={"r": self.run_id}
            ).result_rows[0][0]
            summarized = client.query(  # a batch's step_metrics rows land a moment after its steps rows
                "SELECT uniqExact(step) FROM rankstream.step_metrics FINAL WHERE run_id = {r:String}",
                parameters={"r": self.run_id},
            ).result_rows[0][0]
            if got >= want and summarized >= want and alerts >= len(self.model.alert_ids):
                return
            time.sleep(0.5)

    def _show_sql(self) -> None:
        self._wait_for_store()
        r = self.run_id
        queries = {
            "loss curve (per 25 steps)": (
                "SELECT intDiv(step, 25) * 25 AS from_step, round(avg(mean), 4) AS loss_mean, "
                "round(min(min), 4) AS loss_min, round(max(max), 4) AS loss_max, sum(n) AS values "
                f"FROM rankstream.step_metrics FINAL WHERE run_id = '{r}' AND metric = 'loss' "
                "GROUP BY from_step ORDER BY from_step"
            ),
            "per-rank step-time spread": (
                "SELECT rank, round(avg(value) * 1000, 1) AS avg_ms, round(quantile(0.99)(value) * 1000, 1) AS p99_ms, "
                "round(max(value) * 1000, 1) AS max_ms, count() AS steps "
                f"FROM rankstream.metrics FINAL WHERE run_id = '{r}' AND metric = 'data_time_s' "
                "GROUP BY rank ORDER BY rank"
            ),
            "alerts by rule": (
                "SELECT rule, any(severity) AS severity, count() AS alerts, min(step) AS first_step, "
                "arrayStringConcat(arrayDistinct(arrayFlatten(groupArray(ranks))), ',') AS ranks "
                f"FROM rankstream.alerts FINAL WHERE run_id = '{r}' AND state != 'resolved' "
                "GROUP BY rule ORDER BY first_step"
            ),
        }
        self.console.rule("[bold]from the store (ClickHouse SQL over the sink's HTTP interface)")
        for title, sql in queries.items():
            command = [sys.executable, "-m", "rankstream.cli", "sql", sql, "--state-dir", str(self.settings.state_path)]
            shown = f'rankstream sql "{sql}" --state-dir {self.settings.state_dir}'
            self.console.print(f"\n[bold]{title}[/]\n[dim]$ {shown}[/]")
            proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
            if proc.returncode != 0:
                raise DemoError(
                    f"query failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}"
                )
            self.console.print(proc.stdout.rstrip(), highlight=False, markup=False)


def run_demo(settings: Settings, *, keep: bool, steps: int, ranks: int) -> int:
    console = Console()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return Demo(settings, keep=keep, steps=steps, ranks=ranks, console=console).run()
