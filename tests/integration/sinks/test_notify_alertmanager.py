"""The notifier with real parts: the broker, Debian's AlertManager (example config) and a local webhook receiver.

Alert records are produced straight to ``<prefix>.alerts`` here (the notifier's unit of work);
tests/integration/sinks/test_notify_pipeline.py takes them from a real worker on a faulty run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.dev.webhook_receiver import WebhookReceiver
from rankstream.schema import alert_id
from rankstream.sinks.notify.config import parse_config
from tests.integration.sinks.notify_kit import alertmanager, notifier_running, produce_alerts, wait_for
from tests.integration.streamkit import collect, committed_offsets

pytestmark = [pytest.mark.kafka]

DING_SECRET = "SECtest-signing-secret"
FEISHU_SECRET = "feishu-test-secret"


def record(run_id: str, rule: str, step: int, ranks: list[int], severity: str, state: str | None = None) -> dict:
    rec = {
        "v": 1,
        "alert_id": alert_id(run_id, rule, step, ranks),
        "run_id": run_id,
        "team": "nlp",
        "rule": rule,
        "severity": severity,
        "step": step,
        "ranks": ranks,
        "ts": 1_700_000_000.0 + step,
        "message": f"{rule} in run llama-sft ({run_id}) at step {step}.",
        "evidence": {"value": 9.5},
    }
    if state:
        rec["state"] = state
    return rec


def test_faulty_run_alerts_reach_alertmanager_grouped_and_chat_signed_and_resolved(
    kafka: Settings, tmp_path: Path
) -> None:
    run = "run-storm"
    storm = [
        record(run, "loss_spike", 60, [], "warning"),
        record(run, "straggler", 61, [3], "warning"),
        record(run, "rank_hung", 62, [5], "critical"),
        record(run, "grad_explosion", 63, [], "critical"),
    ]
    other = record("run-calm", "loss_plateau", 400, [], "info")
    receiver = WebhookReceiver(dingtalk_secret=DING_SECRET, feishu_secret=FEISHU_SECRET)
    with receiver as hooks, alertmanager(tmp_path, hooks.url) as am:
        config = parse_config(
            {
                "group_wait_s": 1,
                "receivers": {
                    "am": {"kind": "alertmanager", "url": am.url},
                    "ding": {
                        "kind": "dingtalk",
                        "url": f"{hooks.url}/dingtalk?access_token=t0k",
                        "secret": DING_SECRET,
                    },
                    "slack": {"kind": "slack", "url": f"{hooks.url}/slack/T000/B000/XXXX"},
                    "feishu": {"kind": "feishu", "url": f"{hooks.url}/feishu/hook/abc", "secret": FEISHU_SECRET},
                },
                "routes": [
                    {"receivers": ["am"]},
                    {"match": {"team": "nlp", "severity": ["warning", "critical"]}, "receivers": ["ding", "slack"]},
                    {"match": {"severity": "critical"}, "receivers": ["feishu"]},
                ],
            },
            env={},
        )
        with notifier_running(kafka, config) as notifier:
            produce_alerts(kafka, [*storm, storm[0], other])  # storm[0] again: a duplicate from a worker restart
            firing = wait_for(
                lambda: len(active := am.alerts()) == 5 and active, 30, "five alerts active in AlertManager"
            )
            by_id = {a["labels"]["alert_id"]: a for a in firing}
            assert set(by_id) == {r["alert_id"] for r in [*storm, other]}
            hung = by_id[storm[2]["alert_id"]]["labels"]
            assert hung == {
                "alertname": "rank_hung",
                "alert_id": storm[2]["alert_id"],
                "run_id": run,
                "run_name": "llama-sft",
                "team": "nlp",
                "rule": "rank_hung",
                "severity": "critical",
                "ranks": "5",
            }
            assert by_id[storm[2]["alert_id"]]["annotations"]["message"] == storm[2]["message"]
            # AlertManager groups by run_id: the storm is one group per route, not four notifications.
            groups = wait_for(
                lambda: [g for g in am.groups() if g["labels"] == {"run_id": run} and g["receiver"]["name"] == "slack"],
                15,
                "the storm's group",
            )
            assert len(groups) == 1 and len(groups[0]["alerts"]) == 4
            # Chat: one DingTalk message and one Slack message list the whole storm; the calm run's info stays out.
            ding = wait_for(lambda: hooks.on("/dingtalk"), 15, "the DingTalk robot message")
            slack = wait_for(lambda: hooks.on("/slack/T000/B000/XXXX"), 15, "the Slack message")
            feishu = wait_for(lambda: hooks.on("/feishu/hook/abc"), 15, "the Feishu bot message")
            assert len(ding) == 1 and len(slack) == 1 and len(feishu) == 1
            assert feishu[0].signed is True and feishu[0].body["msg_type"] == "text"
            assert "2 firing" in feishu[0].body["content"]["text"]  # the storm's two criticals
            assert ding[0].signed is True and ding[0].query["access_token"] == "t0k"
            text = ding[0].body["markdown"]["text"]
            assert all(r["rule"] in text for r in storm) and "loss_plateau" not in text
            assert set(slack[0].body) == {"text", "blocks"} and slack[0].body["blocks"][0]["type"] == "section"
            assert "4 firing" in slack[0].body["text"]
            # AlertManager notified its own Slack receiver (the example config) once for the storm.
            am_slack = wait_for(lambda: hooks.on("/am-slack"), 15, "AlertManager's Slack notification")
            assert "attachments" in am_slack[0].body

            produce_alerts(kafka, [{**storm[2], "state": "resolved", "ts": storm[2]["ts"] + 30}])
            wait_for(
                lambda: storm[2]["alert_id"] not in {a["labels"]["alert_id"] for a in am.alerts()},
                30,
                "the resolved alert to leave the active ones",
            )
            assert len(am.alerts()) == 4
            resolved_hook = wait_for(
                lambda: [
                    a
                    for r in hooks.on("/am-dingtalk")
                    for a in r.body["alerts"]
                    if a["status"] == "resolved" and a["labels"]["alert_id"] == storm[2]["alert_id"]
                ],
                30,
                "AlertManager's resolved notification",
            )
            assert resolved_hook[0]["labels"]["rule"] == "rank_hung"
            resolved_chat = wait_for(lambda: hooks.on("/dingtalk")[1:], 15, "the DingTalk resolved line")
            assert "RESOLVED rank_hung (step 62 ranks 5)" in resolved_chat[0].body["markdown"]["text"]
            wait_for(lambda: notifier.stats.delivered["am"] == 6, 15, "six AlertManager deliveries")
            assert notifier.stats.duplicates == 1
            group = notifier.group_id
            wait_for(lambda: committed_offsets(kafka, group, kafka.topics.alerts) == 7, 15, "7 offsets committed")
    assert notifier.stats.dlq == 0


def test_receiver_that_keeps_failing_sends_the_alerts_to_the_dlq_with_the_reason(
    kafka: Settings, tmp_path: Path
) -> None:
    alerts = [record("run-x", "loss_spike", s, [], "critical") for s in (10, 20, 30)]
    with WebhookReceiver(dingtalk_secret=DING_SECRET) as hooks:
        config = parse_config(
            {
                "group_wait_s": 0.5,
                "retry": {"attempts": 3, "backoff_s": 0.1, "max_backoff_s": 0.2},
                "receivers": {
                    "ding": {"kind": "dingtalk", "url": f"{hooks.url}/dingtalk?access_token=t", "secret": "SECwrong"},
                    "hook": {"kind": "webhook", "url": f"{hooks.url}/json"},
                },
            },
            env={},
        )
        hooks.fail_next["/json"] = [503, 502]  # the JSON receiver recovers on the third attempt
        with notifier_running(kafka, config) as notifier:
            produce_alerts(kafka, [*alerts, b"{broken"])
            letters = collect(kafka, kafka.topics.dlq, lambda r: len(r) >= 4, 60)
            wait_for(lambda: committed_offsets(kafka, notifier.group_id, kafka.topics.alerts) == 4, 30, "commits")
        json_posts = [r for r in hooks.on("/json") if isinstance(r.body, dict)]
    by_reason: dict[str, set[int]] = {}
    for letter in letters:
        by_reason.setdefault(letter["reason"], set()).add(letter["offset"])
    signature = (
        "notify: gave up after 1 attempt(s): receiver ding (dingtalk): "
        'errcode 310000 {"errcode":310000,"errmsg":"sign not match"}'
    )
    invalid = [r for r in by_reason if r.startswith("notify: invalid alert: not valid JSON")]
    assert set(by_reason) == {signature, *invalid} and len(invalid) == 1  # a bad signature is not retried
    assert len(by_reason[signature]) + len(by_reason[invalid[0]]) == 4
    assert len(json_posts) == 3 and len(json_posts[-1].body["alerts"]) == 3  # two failures, then delivered
    assert notifier.stats.dlq == 4 and notifier.stats.failures == 3


def test_notifier_stopped_while_a_receiver_is_down_loses_nothing_after_a_restart(
    kafka: Settings, tmp_path: Path
) -> None:
    alerts = [record(f"run-{i % 3}", "loss_spike", 10 * i, [], "warning") for i in range(12)]
    config = parse_config(
        {
            "group_wait_s": 0.2,
            "retry": {"attempts": 50, "backoff_s": 0.2, "max_backoff_s": 0.5},
            "receivers": {"hook": {"kind": "webhook", "url": "${HOOK}/json"}},
        },
        env={"HOOK": "http://127.0.0.1:1"},  # nothing listens there: every attempt fails
    )
    with notifier_running(kafka, config) as first:
        produce_alerts(kafka, alerts)
        wait_for(lambda: first.stats.messages == 12 and first.stats.failures >= 3, 30, "failing deliveries")
    assert first.stats.dlq == 0 and sum(first.stats.delivered.values()) == 0
    assert committed_offsets(kafka, first.group_id, kafka.topics.alerts) == 0  # nothing delivered, nothing committed
    with WebhookReceiver() as hooks:
        healthy = parse_config(
            {"group_wait_s": 2, "receivers": {"hook": {"kind": "webhook", "url": f"{hooks.url}/json"}}}, env={}
        )
        with notifier_running(kafka, healthy) as second:
            wait_for(
                lambda: committed_offsets(kafka, second.group_id, kafka.topics.alerts) == 12, 30, "12 offsets committed"
            )
        delivered = [a["alert_id"] for r in hooks.on("/json") for a in r.body["alerts"]]
    assert sorted(delivered) == sorted(a["alert_id"] for a in alerts)  # every alert once, none lost
    assert len(hooks.on("/json")) == 3  # one message per run (all were re-read within one 2 s window)
