"""Pure builders of what each receiver is sent: AlertManager v2 alerts and chat messages.

Nothing here reads a clock or the network: ``now`` is an argument, so the
formats are unit-tested byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from rankstream.sinks.notify.alerts import NotifyAlert
from rankstream.sinks.notify.signing import feishu_sign

#: Chat platforms cut long messages (Slack: 3,000 characters per text block); lines past this are summarised.
MAX_CHAT_CHARS = 2800
MAX_EVIDENCE_CHARS = 500
DEFAULT_GENERATOR_URL = "http://127.0.0.1:8123/?query={sql}"
SEVERITY_MARK = {"critical": "CRITICAL", "warning": "WARNING", "info": "info"}


def iso(ts: float) -> str:
    """RFC 3339 in UTC with milliseconds, what AlertManager's API reads."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def evidence_summary(evidence: Mapping[str, Any], limit: int = MAX_EVIDENCE_CHARS) -> str:
    """``key=value, ...`` of the numbers that fired the rule, cut to ``limit`` characters."""
    text = ", ".join(f"{key}={value}" for key, value in evidence.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def generator_url(template: str, alert: NotifyAlert) -> str:
    """The link AlertManager shows: the configured template, or a query of the store's HTTP interface."""
    sql = f"SELECT * FROM alerts FINAL WHERE run_id = '{alert.run_id}' ORDER BY ts"
    values = {"run_id": quote(alert.run_id, safe=""), "alert_id": alert.alert_id, "sql": quote(sql, safe="")}
    return (template or DEFAULT_GENERATOR_URL).format(**values)


def am_labels(alert: NotifyAlert) -> dict[str, str]:
    """AlertManager labels; ``alert_id`` makes the identity, so a resolve closes exactly what fired.

    Empty values are left out (AlertManager treats them as absent anyway).
    """
    labels = {
        "alertname": alert.rule,
        "alert_id": alert.alert_id,
        "run_id": alert.run_id,
        "run_name": alert.run_name,
        "team": alert.team,
        "rule": alert.rule,
        "severity": alert.severity,
        "ranks": ",".join(str(r) for r in alert.ranks),
    }
    return {key: value for key, value in labels.items() if value}


def am_alert(
    alert: NotifyAlert,
    *,
    now: float,
    resolve_after_s: float,
    url_template: str = "",
    fired: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One element of ``POST /api/v2/alerts``.

    A firing alert ends ``resolve_after_s`` ahead (AlertManager resolves it
    then unless it is sent again); a resolved one ends now. ``fired`` is the
    element sent when the alert fired, if remembered: its labels and start are
    reused so that the resolve closes that very alert.
    """
    starts = min(alert.ts, now)
    labels = am_labels(alert)
    if fired is not None:
        labels = dict(fired["labels"])
        starts_at = str(fired["startsAt"])
    else:
        starts_at = iso(starts)
    annotations = {"message": alert.message, "summary": alert.message, "step": str(alert.step)}
    evidence = evidence_summary(alert.evidence)
    if evidence:
        annotations["evidence"] = evidence
    if alert.resolved:
        annotations["resolved_at_step"] = str(alert.step)
    ends = now if alert.resolved else now + resolve_after_s
    return {
        "labels": labels,
        "annotations": annotations,
        "startsAt": starts_at,
        "endsAt": iso(max(ends, starts)),
        "generatorURL": generator_url(url_template, alert),
    }


# ----------------------------------------------------------------------------- chat


def run_title(alerts: Sequence[NotifyAlert]) -> str:
    first = alerts[0]
    name = f"{first.run_name} ({first.run_id})" if first.run_name else first.run_id
    team = f" [team {first.team}]" if first.team else ""
    return f"rankstream: run {name}{team}"


def alert_line(alert: NotifyAlert) -> str:
    """One chat line per alert: a short 'resolved' line, or severity, rule, step, ranks and the sentence."""
    ranks = f" ranks {','.join(str(r) for r in alert.ranks)}" if alert.ranks else ""
    if alert.resolved:
        return f"RESOLVED {alert.rule} (step {alert.step}{ranks})"
    return (
        f"{SEVERITY_MARK.get(alert.severity, alert.severity)} {alert.rule} at step {alert.step}{ranks}: {alert.message}"
    )


def chat_text(alerts: Sequence[NotifyAlert], limit: int = MAX_CHAT_CHARS) -> str:
    """The message body for one run's group: a title, then one line per alert (cut with a count)."""
    firing = sum(1 for a in alerts if not a.resolved)
    counts = f"{firing} firing" + (f", {len(alerts) - firing} resolved" if firing < len(alerts) else "")
    lines = [f"{run_title(alerts)}: {counts}"]
    used = len(lines[0])
    for index, alert in enumerate(alerts):
        line = "- " + alert_line(alert)
        if used + len(line) + 1 > limit:
            lines.append(f"... and {len(alerts) - index} more")
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


def slack_body(alerts: Sequence[NotifyAlert]) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (notifications, fallback) and one section block."""
    text = chat_text(alerts)
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def dingtalk_body(alerts: Sequence[NotifyAlert]) -> dict[str, Any]:
    """A DingTalk robot markdown message (the signature goes in the URL: :func:`signing.dingtalk_url`)."""
    text = chat_text(alerts)
    title, _, rest = text.partition("\n")
    markdown = f"#### {title}\n\n" + "\n".join(f"{line}\n" for line in rest.splitlines())
    return {"msgtype": "markdown", "markdown": {"title": title[:64], "text": markdown}}


def feishu_body(alerts: Sequence[NotifyAlert], *, secret: str = "", timestamp_s: int = 0) -> dict[str, Any]:
    """A Feishu/Lark custom bot text message, signed in the body when the bot has a secret."""
    body: dict[str, Any] = {"msg_type": "text", "content": {"text": chat_text(alerts)}}
    if secret:
        body["timestamp"] = str(timestamp_s)
        body["sign"] = feishu_sign(timestamp_s, secret)
    return body


def webhook_body(receiver: str, alerts: Sequence[NotifyAlert]) -> dict[str, Any]:
    """Generic JSON: the alert records as the contract writes them, plus their state."""
    return {
        "receiver": receiver,
        "run_id": alerts[0].run_id,
        "text": chat_text(alerts),
        "alerts": [
            {
                "alert_id": a.alert_id,
                "run_id": a.run_id,
                "run_name": a.run_name,
                "team": a.team,
                "rule": a.rule,
                "severity": a.severity,
                "state": a.state,
                "step": a.step,
                "ranks": list(a.ranks),
                "ts": a.ts,
                "message": a.message,
                "evidence": a.evidence,
            }
            for a in alerts
        ],
    }
