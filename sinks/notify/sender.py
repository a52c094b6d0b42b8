"""HTTP delivery to each kind of receiver (httpx); one call sends one :class:`~.outbox.Delivery`.

A failure raises :class:`DeliveryFailed` with a one-line reason that never
holds the receiver's URL or secret (tokens live in webhook URLs).
``permanent`` failures (a 4xx other than 408/429, a robot refusing its
signature) are not retried: the payload or the credentials are wrong, and
trying again would not help.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import httpx

from rankstream.errors import OperationFailed
from rankstream.schema import dumps
from rankstream.sinks.notify import payloads
from rankstream.sinks.notify.alerts import NotifyAlert
from rankstream.sinks.notify.config import NotifyConfig, Receiver
from rankstream.sinks.notify.outbox import Delivery
from rankstream.sinks.notify.signing import dingtalk_url

RETRIABLE_STATUS = frozenset({408, 425, 429})
#: Rate limits the robots report in an HTTP 200 body: DingTalk "send too fast", Feishu "frequency limited".
RATE_LIMIT_CODES = frozenset({130101, 11232})
FIRED_MEMORY = 50_000


class DeliveryFailed(OperationFailed):
    """A receiver did not take a delivery; the message names the receiver and the reason, not the URL."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


class Sender:
    """Sends deliveries; remembers what AlertManager was sent for each firing alert (to resolve it)."""

    def __init__(self, config: NotifyConfig, client: httpx.Client | None = None) -> None:
        self.config = config
        # httpx logs every request's URL at INFO, and webhook URLs hold tokens: keep that logger above INFO.
        httpx_log = logging.getLogger("httpx")
        if httpx_log.getEffectiveLevel() < logging.WARNING:
            httpx_log.setLevel(logging.WARNING)
        self.client = client or httpx.Client(headers={"User-Agent": "rankstream-notify"})
        #: (receiver, team, alert_id) -> labels and start sent when it fired (two teams may share a run_id,
        #: so an alert_id alone could make one team's resolve close another team's alert).
        self._fired: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()

    def close(self) -> None:
        self.client.close()

    def send(self, delivery: Delivery, now: float | None = None) -> None:
        now = time.time() if now is None else now
        receiver = delivery.receiver
        alerts = delivery.alerts
        if receiver.kind == "alertmanager":
            elements = []
            for alert in alerts:  # in order: a resolve in the same batch closes the element that fired
                element = self._am_element(receiver, alert, now)
                if not alert.resolved:
                    self._remember(receiver.name, alert, element)
                elements.append(element)
            url = receiver.url.reveal().rstrip("/") + "/api/v2/alerts"
            self._post(receiver, url, elements)
            return
        if receiver.kind == "slack":
            self._post(receiver, receiver.url.reveal(), payloads.slack_body(alerts))
        elif receiver.kind == "dingtalk":
            url = receiver.url.reveal()
            if receiver.secret:
                url = dingtalk_url(url, int(now * 1000), receiver.secret.reveal())
            self._post(receiver, url, payloads.dingtalk_body(alerts), result_key="errcode")
        elif receiver.kind == "feishu":
            body = payloads.feishu_body(alerts, secret=receiver.secret.reveal(), timestamp_s=int(now))
            self._post(receiver, receiver.url.reveal(), body, result_key="code")
        else:
            self._post(receiver, receiver.url.reveal(), payloads.webhook_body(receiver.name, alerts))

    def _am_element(self, receiver: Receiver, alert: NotifyAlert, now: float) -> dict[str, Any]:
        fired = self._fired.get((receiver.name, alert.source_team, alert.alert_id)) if alert.resolved else None
        return payloads.am_alert(
            alert,
            now=now,
            resolve_after_s=self.config.resolve_after_s,
            url_template=self.config.generator_url,
            fired=fired,
        )

    def _remember(self, receiver: str, alert: NotifyAlert, element: dict[str, Any]) -> None:
        key = (receiver, alert.source_team, alert.alert_id)
        self._fired[key] = {"labels": element["labels"], "startsAt": element["startsAt"]}
        self._fired.move_to_end(key)
        while len(self._fired) > FIRED_MEMORY:
            self._fired.popitem(last=False)

    def _post(self, receiver: Receiver, url: str, body: Any, result_key: str = "") -> None:
        where = f"receiver {receiver.name} ({receiver.kind})"
        try:
            response = self.client.post(
                url, content=dumps(body), headers={"Content-Type": "application/json"}, timeout=receiver.timeout_s
            )
        except httpx.HTTPError as exc:
            # httpx messages may quote the URL (and so a token): name only the error's type.
            raise DeliveryFailed(f"{where}: {type(exc).__name__}") from None
        status = response.status_code
        if status >= 300:
            permanent = 400 <= status < 500 and status not in RETRIABLE_STATUS
            raise DeliveryFailed(f"{where}: HTTP {status} {_excerpt(response)}", permanent=permanent)
        if result_key:
            try:
                code = response.json().get(result_key, 0)
            except (ValueError, AttributeError):
                code = 0  # a proxy or test receiver that answers plain text: HTTP 2xx is success
            if code not in (0, None):
                # DingTalk and Feishu answer HTTP 200 with an error code (bad signature, keyword, rate limit).
                raise DeliveryFailed(
                    f"{where}: {result_key} {code} {_excerpt(response)}", permanent=code not in RATE_LIMIT_CODES
                )


def _excerpt(response: httpx.Response, limit: int = 160) -> str:
    text = " ".join(response.text.split())
    return text[:limit]
