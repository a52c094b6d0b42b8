"""Alert -> AlertManager delivery latency through the real pipeline at ~5k events/s.

1. An own broker (port 19592, state .rankstream/bench-notify), Debian's AlertManager on the
   example infra/prometheus/alertmanager.yml (installed when missing), one `rankstream worker`
   subprocess and the notifier (in this process, recording when each delivery was accepted).
2. A paced producer sends a live 64-rank run at ``--rate`` events/s with a loss spike every 90
   steps and a NaN loss 45 steps later (as bench_stream's latency phase).
3. Per alert: ``publish`` = the alert's Kafka timestamp (the worker's producer) - the produce time
   of the last event of its trigger step; ``notify`` = AlertManager's 200 to the notifier's POST -
   the alert's Kafka timestamp; ``end_to_end`` = the sum. Every delivered alert is checked to be
   active in AlertManager through its API.

The baseline is the worker's publish latency in the same run: ratio = notify p99 / publish p99.
Target (issue 12): end-to-end p99 <= 1 s.

Prints one JSON line: {"bench":"notify","events_per_s":..,"alerts_measured":..,
"notify_latency_p50_s":..,"notify_latency_p99_s":..,"end_to_end_latency_p50_s":..,
"end_to_end_latency_p99_s":..,"baseline":"worker_alert_publish_latency","baseline_p99_s":..,"ratio":..}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kafka import KafkaProducer  # noqa: E402

from rankstream.config import Settings  # noqa: E402
from rankstream.dev.stack import broker_status, start_broker, stop_broker  # noqa: E402
from rankstream.dev.synthetic import Fault, generate_run  # noqa: E402
from rankstream.dev.webhook_receiver import WebhookReceiver  # noqa: E402
from rankstream.kafka_admin import ensure_topics  # noqa: E402
from rankstream.schema import dumps  # noqa: E402
from rankstream.sinks.notify.config import alertmanager_only  # noqa: E402
from tests.integration.sinks.notify_kit import alertmanager, notifier_running, wait_for  # noqa: E402
from tests.integration.streamkit import WorkerProcess, wait_group_stable  # noqa: E402

BENCH_PORT = 19592
RANKS = 64


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _round(values: list[float], q: float | None) -> float | None:
    if not values:
        return None
    return round(statistics.median(values) if q is None else _percentile(values, q), 3)


def run(settings: Settings, tmp: Path, rate: float, seconds: float) -> dict:
    step_time = RANKS / rate
    steps = int(seconds / step_time)
    faults = [Fault("loss_spike", step=s) for s in range(60, steps, 90)]
    faults += [Fault("nan_loss", step=s) for s in range(105, steps, 90)]
    events = generate_run(
        "notify-run", world_size=RANKS, steps=steps, faults=faults, seed=5, start_ts=0.0, step_time_s=step_time
    )
    with WebhookReceiver() as hooks, alertmanager(tmp, hooks.url) as am:
        worker = WorkerProcess(settings.with_overrides(state_dir=str(tmp / "w")), tmp / "worker.log")
        try:
            with notifier_running(settings, alertmanager_only(am.url), record_deliveries=True) as notifier:
                wait_group_stable(settings, f"{settings.topic_prefix}-stream", 1, 90)
                wait_group_stable(settings, notifier.group_id, 1, 90)
                start = time.time() + 1.0
                for e in events:
                    e["ts"] += start
                completed_at: dict[int, float] = {}
                producer = KafkaProducer(linger_ms=2, **settings.kafka_python_kwargs())
                for e in events:
                    delay = e["ts"] - time.time()
                    if delay > 0:
                        time.sleep(delay)  # pacing the live job, not synchronisation
                    producer.send(settings.topics.events, key=e["run_id"].encode(), value=dumps(e))
                    if e["kind"] == "step":
                        completed_at[e["step"]] = time.time()
                producer.flush(60)
                sent_s = time.time() - start
                producer.close()
                expected = 2 * len(faults)  # each fault fires (at least) its own alert
                wait_for(lambda: notifier.stats.delivered["alertmanager"] >= expected, 60, f"{expected} deliveries")
                deliveries = list(notifier.stats.deliveries)
            active = {a["labels"]["alert_id"]: a for a in am.alerts()}
        finally:
            worker.stop()
    resolved = {d.alert_id for d in deliveries if d.state == "resolved"}
    firing = [d for d in deliveries if d.state == "firing"]
    missing = [d.alert_id for d in firing if d.alert_id not in resolved and d.alert_id not in active]
    assert not missing, f"{len(missing)} delivered, unresolved alert(s) not active in AlertManager"
    publish, notify, e2e = [], [], []
    for d in firing:  # a resolve's trigger is the run's later state, not a step: firing alerts only
        notify.append(d.delivered_s - d.published_s)
        completed = completed_at.get(d.step)
        if completed is not None:
            publish.append(d.published_s - completed)
            e2e.append(d.delivered_s - completed)
    publish.sort(), notify.sort(), e2e.sort()
    p99_notify, p99_publish = _round(notify, 0.99), _round(publish, 0.99)
    return {
        "bench": "notify",
        "events": len(events),
        "events_per_s": round(len(events) / sent_s, 1),
        "alerts_measured": len(notify),
        "resolves_delivered": len(resolved),
        "notify_latency_p50_s": _round(notify, None),
        "notify_latency_p99_s": p99_notify,
        "end_to_end_latency_p50_s": _round(e2e, None),
        "end_to_end_latency_p99_s": _round(e2e, 0.99),
        "baseline": "worker_alert_publish_latency",
        "baseline_p50_s": _round(publish, None),
        "baseline_p99_s": p99_publish,
        "ratio": round(p99_notify / p99_publish, 3) if p99_notify is not None and p99_publish else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="events/s of the live run")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the live run")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rankstream-bench-notify-"))
    base = Settings(
        state_dir=str(ROOT / ".rankstream" / "bench-notify"),
        kafka_port=BENCH_PORT,
        kafka_controller_port=BENCH_PORT + 1,
        bootstrap_servers=f"127.0.0.1:{BENCH_PORT}",
    )
    started = not broker_status(base).ready
    start_broker(base)
    try:
        settings = base.with_overrides(topic_prefix=f"bnotify{uuid.uuid4().hex[:8]}", partitions=3)
        ensure_topics(settings)
        result = run(settings, tmp, args.rate, args.seconds)
    finally:
        if started:
            stop_broker(base)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
