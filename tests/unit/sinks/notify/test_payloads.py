"""What receivers are sent: AlertManager v2 elements (firing and resolved) and chat messages."""

from __future__ import annotations

import pytest

from rankstream.sinks.notify.alerts import RunNames, parse_alert, run_name_from
from rankstream.sinks.notify.payloads import (
    am_alert,
    chat_text,
    dingtalk_body,
    feishu_body,
    iso,
    slack_body,
    webhook_body,
)
from rankstream.sinks.notify.signing import feishu_sign
from rankstream.sinks.records import InvalidRecord
from tests.unit.sinks.notify.conftest import alert_record, make_alert

NOW = 1_700_000_100.0


def test_state_defaults_to_firing_and_is_checked() -> None:
    assert make_alert().state == "firing"
    assert make_alert(state="resolved").resolved
    with pytest.raises(InvalidRecord, match="state"):
        parse_alert(alert_record(state="gone"))


def test_run_name_is_read_from_the_message_only_for_this_run() -> None:
    assert make_alert().run_name == "llama-sft"
    assert run_name_from("Loss of run r1 jumped", "r1") == ""
    assert run_name_from("run a (b) (r1) stalled", "r1") == "a (b)"
    assert run_name_from("run x (other) stalled", "r1") == ""


def test_firing_alert_ends_ahead_and_carries_labels_and_annotations() -> None:
    alert = make_alert()
    element = am_alert(alert, now=NOW, resolve_after_s=900, url_template="http://ui/runs/{run_id}")
    assert element["labels"] == {
        "alertname": "loss_spike",
        "alert_id": alert.alert_id,
        "run_id": "run-a",
        "run_name": "llama-sft",
        "team": "nlp",
        "rule": "loss_spike",
        "severity": "warning",
        "ranks": "3",
    }
    assert element["startsAt"] == iso(alert.ts) == "2023-11-14T22:13:20.000Z"
    assert element["endsAt"] == iso(NOW + 900)
    assert element["annotations"]["message"] == alert.message
    assert element["annotations"]["evidence"] == "loss=9.5, baseline=2.1"
    assert element["generatorURL"] == "http://ui/runs/run-a"


def test_default_generator_url_queries_the_store() -> None:
    element = am_alert(make_alert(), now=NOW, resolve_after_s=900)
    assert element["generatorURL"].startswith("http://127.0.0.1:8123/?query=SELECT%20%2A%20FROM%20alerts")
    assert "run-a" in element["generatorURL"]


def test_resolved_alert_ends_now_with_the_labels_it_fired_with() -> None:
    fired = am_alert(make_alert(team=""), now=NOW, resolve_after_s=900)  # team learnt after it fired
    resolved = make_alert(state="resolved", ts=NOW + 50)
    element = am_alert(resolved, now=NOW + 60, resolve_after_s=900, fired=fired)
    assert element["labels"] == fired["labels"] and "team" not in element["labels"]
    assert element["startsAt"] == fired["startsAt"]
    assert element["endsAt"] == iso(NOW + 60)
    alone = am_alert(resolved, now=NOW + 60, resolve_after_s=900)
    assert alone["endsAt"] == iso(NOW + 60) and alone["labels"]["team"] == "nlp"


def test_start_in_the_future_is_clamped_to_now() -> None:
    element = am_alert(make_alert(ts=NOW + 30), now=NOW, resolve_after_s=900)
    assert element["startsAt"] == iso(NOW)


def test_chat_text_groups_a_runs_alerts_with_a_short_resolved_line() -> None:
    alerts = [
        make_alert(severity="critical"),
        make_alert(rule="straggler", step=130, ranks=(1, 2)),
        make_alert(rule="rank_hung", step=90, ranks=(0,), state="resolved"),
    ]
    text = chat_text(alerts)
    lines = text.splitlines()
    assert lines[0] == "rankstream: run llama-sft (run-a) [team nlp]: 2 firing, 1 resolved"
    assert lines[1].startswith("- CRITICAL loss_spike at step 120 ranks 3: Loss of run")
    assert lines[2].startswith("- WARNING straggler at step 130 ranks 1,2:")
    assert lines[3] == "- RESOLVED rank_hung (step 90 ranks 0)"


def test_chat_text_is_cut_with_a_count() -> None:
    alerts = [make_alert(step=s) for s in range(200)]
    text = chat_text(alerts, limit=600)
    assert len(text) <= 600 + 40
    last = text.splitlines()[-1]
    assert last.startswith("... and ") and last.endswith(" more")
    shown = len(text.splitlines()) - 2
    assert int(last.split()[2]) == 200 - shown


def test_slack_dingtalk_feishu_webhook_shapes() -> None:
    alerts = [make_alert()]
    slack = slack_body(alerts)
    assert slack["text"] == chat_text(alerts)
    assert slack["blocks"][0]["type"] == "section" and slack["blocks"][0]["text"]["type"] == "mrkdwn"
    ding = dingtalk_body(alerts)
    assert ding["msgtype"] == "markdown" and ding["markdown"]["title"].startswith("rankstream: run llama-sft")
    assert "loss_spike" in ding["markdown"]["text"]
    feishu = feishu_body(alerts, secret="s3", timestamp_s=1_700_000_000)
    assert feishu["msg_type"] == "text" and feishu["timestamp"] == "1700000000"
    assert feishu["sign"] == feishu_sign(1_700_000_000, "s3")
    assert "sign" not in feishu_body(alerts)
    hook = webhook_body("ops", alerts)
    assert hook["alerts"][0]["alert_id"] == alerts[0].alert_id and hook["alerts"][0]["state"] == "firing"


def test_run_names_fill_resolves_that_do_not_name_the_run() -> None:
    names = RunNames(size=1)
    fired = names.fill(make_alert())
    resolved = parse_alert({**alert_record(state="resolved"), "message": "Resolved: loss is back to 2.1."})
    assert resolved.run_name == ""
    assert names.fill(resolved).run_name == fired.run_name == "llama-sft"
    assert (
        am_alert(names.fill(resolved), now=NOW, resolve_after_s=9)["labels"]
        == am_alert(fired, now=NOW, resolve_after_s=9)["labels"]
    )
    names.fill(make_alert(run_id="run-b"))  # the LRU holds one run
    assert names.fill(resolved).run_name == ""
