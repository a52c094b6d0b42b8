"""The sink's dead-letter producer: invalid, refused and foreign-run messages, each to its team's DLQ topic.

In the legacy and one-team modes every letter goes to the sink's ``<prefix>.dlq``; a
shared sink (``RANKSTREAM_TEAM=*``) sends each to the ``<prefix>.<team>.dlq`` of the
topic it came through (:class:`~rankstream.sinks.pending.DeadLetter` ``topic``), so a
team reads its own dead letters only.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from rankstream.config import Settings
from rankstream.sinks.outage import Retrier
from rankstream.sinks.pending import DeadLetter

log = logging.getLogger("rankstream.sink")


class DeadLetterSender:
    """Sends a batch's dead letters (acks=all) before its offsets are committed; retried like the store."""

    def __init__(self, settings: Settings, retrier: Retrier) -> None:
        self.settings = settings
        self.retrier = retrier
        self._producer: Any = None

    def send(self, messages: list[DeadLetter], deadline: float | None) -> None:
        default = self.settings.topics.dlq

        def send() -> None:
            if self._producer is None:
                from kafka import KafkaProducer

                self._producer = KafkaProducer(acks="all", linger_ms=5, **self.settings.kafka_python_kwargs())
            futures = [self._producer.send(m.topic or default, key=m.key, value=m.value) for m in messages]
            self._producer.flush(timeout=30)
            for future in futures:
                future.get(timeout=30)

        self.retrier.retry(send, "dead-letter topic", deadline)
        per_topic = Counter(m.topic or default for m in messages)
        log.info(
            "sink: %d dead letter(s) sent to %s",
            len(messages),
            ", ".join(f"{topic} ({n})" if len(per_topic) > 1 else topic for topic, n in sorted(per_topic.items())),
        )

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=5)
            except Exception as exc:  # closing must not mask the reason we stop
                log.warning("sink: closing the DLQ producer failed: %s", exc)


__all__ = ["DeadLetterSender"]
