"""The demo's notifications: `rankstream notify` sends the run's alerts to AlertManager and to chat.

Chat is a local webhook receiver standing in for a Slack channel and a signed
DingTalk robot. When Debian's ``prometheus-alertmanager`` binary is present,
a real AlertManager (the example ``infra/prometheus/alertmanager.yml``) gets
every alert and the demo shows its view (groups per run, through the v2 API);
otherwise the demo shows the webhook receiver's log only. Everything started
here is stopped here.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rankstream.config import Settings
from rankstream.dev.alertmanager import AlertManagerProcess, find_alertmanager, local_config
from rankstream.dev.webhook_receiver import WebhookReceiver

#: A made-up robot secret: the receiver checks the DingTalk signature the notifier computes with it.
DEMO_DINGTALK_SECRET = "SECrankstream-demo"
GROUP_WAIT_S = 3


def _notified_all(settings: Settings) -> bool:
    """True when the notifier's group committed the end of every alerts partition (all delivered)."""
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.structs import TopicPartition

    topic = settings.topics.alerts
    admin = KafkaAdminClient(**settings.kafka_python_kwargs())
    consumer = KafkaConsumer(**settings.kafka_python_kwargs())
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(parts)
        group = f"{settings.topic_prefix}.notify"
        committed = {tp: meta.offset for tp, meta in admin.list_group_offsets(group).get(group, {}).items()}
    finally:
        consumer.close()
        admin.close()
    return all(committed.get(tp, 0) >= end for tp, end in ends.items())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoNotifications:
    """:meth:`start` (gives the ``rankstream notify`` arguments), :meth:`show` after the run, :meth:`stop`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.hooks = WebhookReceiver(dingtalk_secret=DEMO_DINGTALK_SECRET)
        self.am: AlertManagerProcess | None = None
        self.started = False

    def start(self) -> list[str]:
        """Start the receiver and, when its binary is there, AlertManager; the notify command's arguments."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hooks.__enter__()
        self.started = True
        binary = find_alertmanager()
        if binary is not None:
            config = local_config(self.workdir / "alertmanager.yml", self.hooks.url, group_interval="5s")
            self.am = AlertManagerProcess(config, self.workdir / "alertmanager", _free_port(), binary).start()
        receivers = {
            "chat-slack": {"kind": "slack", "url": f"{self.hooks.url}/slack/demo"},
            "chat-dingtalk": {
                "kind": "dingtalk",
                "url": f"{self.hooks.url}/dingtalk?access_token=demo",
                "secret": DEMO_DINGTALK_SECRET,
            },
        }
        routes: list[dict[str, Any]] = [
            {"match": {"severity": ["warning", "critical"]}, "receivers": ["chat-slack", "chat-dingtalk"]}
        ]
        if self.am is not None:
            receivers["alertmanager"] = {"kind": "alertmanager", "url": self.am.url}
            routes.insert(0, {"receivers": ["alertmanager"]})
        path = self.workdir / "notify.yaml"
        path.write_text(json.dumps({"group_wait_s": GROUP_WAIT_S, "receivers": receivers, "routes": routes}))
        return ["notify", "--config", str(path)]

    def describe(self) -> str:
        where = (
            f"AlertManager {self.am.url} (pid {self.am.proc.pid if self.am.proc else '?'})"
            if self.am
            else ("no AlertManager binary (apt-get install prometheus-alertmanager to see its view)")
        )
        return f"notifier -> {where} and chat (local receiver {self.hooks.url})"

    def show(self, console: Console, settings: Settings, run_id: str, alive: Callable[[], bool]) -> None:
        """Wait (bounded) until the notifier committed every alert (it commits after delivery), then print
        AlertManager's view and the chat messages."""
        deadline = time.monotonic() + GROUP_WAIT_S + 30
        while time.monotonic() < deadline and alive() and not _notified_all(settings):
            time.sleep(0.5)
        console.rule("[bold]notifications (rankstream notify)")
        if self.am is not None:
            self._show_alertmanager(console, run_id)
        self._show_chat(console)

    def _show_alertmanager(self, console: Console, run_id: str) -> None:
        assert self.am is not None
        try:
            groups = [g for g in self.am.groups() if g["labels"].get("run_id") == run_id]
        except OSError as exc:
            console.print(f"[red]AlertManager did not answer: {exc}[/]")
            return
        console.print(f"\n[bold]AlertManager[/] {self.am.url}  [dim]$ curl {self.am.url}/api/v2/alerts/groups[/]")
        table = Table(
            expand=True, title_justify="left", title=f"{len(groups)} group(s) for run {run_id} (group_by run_id)"
        )
        for col in ("receiver", "alerts", "rules (severity)", "state"):
            table.add_column(col, overflow="fold")
        for group in groups:
            alerts = group["alerts"]
            rules = sorted({f"{a['labels'].get('rule')} ({a['labels'].get('severity')})" for a in alerts})
            states = sorted({a["status"]["state"] for a in alerts})
            table.add_row(group["receiver"]["name"], str(len(alerts)), ", ".join(rules), ", ".join(states))
        console.print(table)
        console.print(
            f"[dim]AlertManager notified its own receivers {len(self.hooks.on('/am-slack'))} time(s) (Slack) and "
            f"{len(self.hooks.on('/am-dingtalk'))} time(s) (DingTalk bridge); resolved alerts leave the active view.[/]"
        )

    def _show_chat(self, console: Console) -> None:
        log = self.workdir / "webhooks.log"
        slack, ding = self.hooks.on("/slack/demo"), self.hooks.on("/dingtalk")
        with log.open("w") as out:
            for received in self.hooks.received:
                out.write(json.dumps({"path": received.path, "signed": received.signed, "body": received.body}) + "\n")
        console.print(
            f"\n[bold]chat[/]: {len(slack)} Slack message(s), {len(ding)} DingTalk message(s) "
            f"({sum(1 for r in ding if r.signed)} with a valid signature); every request in {log}"
        )
        for received in slack[:3]:
            console.print(received.body.get("text", ""), highlight=False, markup=False)
            console.print()

    def stop(self) -> None:
        if self.am is not None:
            self.am.stop()
        if self.started:
            with contextlib.suppress(Exception):
                self.hooks.__exit__()
            self.started = False
