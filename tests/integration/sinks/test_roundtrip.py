"""Round trip through a real broker: generated run -> Kafka -> ``rankstream sink`` -> embedded store.

The store is read as users read it while the sink owns it: through the sink's
HTTP interface, with the unmodified clickhouse-connect client and with
``rankstream sql``. Counts per table are exact, the cookbook's loss curve is
the generated one, invalid input is dead-lettered with a reason.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rankstream.config import Settings
from rankstream.kafka_admin import ensure_topics
from rankstream.sinks.store import portfile
from tests.integration.sinks.support import (
    RANKSTREAM,
    SinkProcess,
    alert_record,
    cookbook_entries,
    cookbook_queries,
    count,
    expected_counts,
    generate_run,
    http_client,
    mean_loss,
    produce,
    produce_events,
    produce_records,
    read_topic,
    step_record,
    wait_until,
)

pytestmark = pytest.mark.kafka

RUN, RUN2, WORLD, STEPS = "run-a", "run-b", 4, 60
INVALID = [b"{not json", b'{"v":1,"kind":"step","run_id":"x","rank":5,"world_size":2,"seq":0,"ts":1.0,"step":1}']


@dataclass
class Loaded:
    settings: Settings
    store: Path
    sink: SinkProcess
    client: Any
    events: list[dict]
    host: str
    port: int


@pytest.fixture(scope="module")
def loaded(kafka_broker: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    tmp = tmp_path_factory.mktemp("sink_rt")
    settings = kafka_broker.with_overrides(
        topic_prefix=f"t{uuid.uuid4().hex[:10]}", state_dir=str(tmp / "state"), partitions=3
    )
    ensure_topics(settings)
    store = tmp / "store"
    events = generate_run(RUN, WORLD, STEPS, team="vision") + generate_run(RUN2, 2, 30, team="nlp", t0=1_750_100_000.0)
    produce_events(settings, events)
    produce(settings, settings.topics.events, [(b"bad", raw) for raw in INVALID])
    produce_records(settings, settings.topics.steps, [step_record(RUN, s, WORLD) for s in range(STEPS)])
    produce(settings, settings.topics.steps, [(b"bad", b'{"v":1,"run_id":"x"}')])
    alerts = [alert_record(RUN, "vision", "straggler", s, [WORLD - 1]) for s in (10, 20, 30)]
    # the first straggler alert is over: its resolved record (same alert_id) is a row of its own
    resolved = {**alerts[0], "state": "resolved", "resolved_step": 15, "ts": alerts[0]["ts"] + 5, "message": "Resolved"}
    produce_records(settings, settings.topics.alerts, alerts + alerts[:1] + [resolved])  # one duplicate alert
    sink = SinkProcess(settings, f"chdb://{store}", tmp / "sink.log", "--http-port", "0", "--batch-rows", "2000")
    sink.start()
    host, port = sink.wait_ready(store)
    client = http_client(host, port)
    exp = expected_counts(events)
    wait_until(lambda: count(client, "metrics") == exp["metrics"] and count(client, "alerts") == 4, "all rows")
    wait_until(lambda: count(client, "steps") == STEPS and count(client, "step_metrics") == STEPS * 2, "all steps")
    try:
        yield Loaded(settings, store, sink, client, events, host, port)
    finally:
        client.close()
        sink.stop()


def test_counts_per_table_are_exact(loaded: Loaded) -> None:
    exp = expected_counts(loaded.events)
    c = loaded.client
    assert count(c, "events") == exp["events"]
    assert count(c, "metrics") == exp["metrics"]
    assert count(c, "steps") == STEPS
    assert count(c, "step_metrics") == STEPS * 2
    assert count(c, "alerts", "WHERE state = 'firing'") == 3 and count(c, "alerts", "WHERE state = 'resolved'") == 1
    assert count(c, "runs") == 2
    # no data lost: every seq of every rank's incarnation is there, exactly once
    rows = c.query(
        "SELECT run_id, rank, inc, count(), uniqExact(seq), min(seq), max(seq) FROM rankstream.events "
        "GROUP BY run_id, rank, inc ORDER BY run_id, rank, inc"
    ).result_rows
    per_rank: dict[tuple[str, int, str], int] = {}
    for e in loaded.events:
        key = (e["run_id"], e["rank"], e.get("inc", ""))
        per_rank[key] = per_rank.get(key, 0) + 1
    assert len(rows) == len(per_rank)
    for run_id, rank, inc, n, uniq, lo, hi in rows:
        assert n == uniq == per_rank[(run_id, rank, inc)] == hi + 1 and lo == 0


def test_team_is_attached_to_every_row(loaded: Loaded) -> None:
    c = loaded.client
    teams = dict(c.query("SELECT run_id, team FROM rankstream.runs FINAL").result_rows)
    assert teams == {RUN: "vision", RUN2: "nlp"}
    for table in ("events", "metrics", "steps", "step_metrics", "alerts"):
        bad = c.command(f"SELECT count() FROM rankstream.{table} WHERE team NOT IN ('vision', 'nlp')")
        assert int(bad) == 0, table
    status = c.query("SELECT run_id, status, run_name FROM rankstream.runs FINAL ORDER BY run_id").result_rows
    assert status == [(RUN, "finished", f"{RUN}-name"), (RUN2, "finished", f"{RUN2}-name")]


def test_loss_curve_query_returns_generated_curve(loaded: Loaded) -> None:
    sql = cookbook_queries()["loss-curve"]
    rows = loaded.client.query(sql, parameters={"run_id": RUN}).result_rows
    assert [r[0] for r in rows] == list(range(STEPS))
    for step, loss, *_ in rows:
        assert loss == pytest.approx(mean_loss(step, WORLD), rel=1e-12)


def test_every_cookbook_query_runs_on_real_data(loaded: Loaded) -> None:
    entries = cookbook_entries()
    assert len(entries) >= 10
    params = {"run_id": RUN, "metric": "loss", "step": 7, "team": "vision", "days": 100_000}
    for name, may_be_empty, sql in entries:
        result = loaded.client.query(sql, parameters=params)  # raises on any SQL error
        if not may_be_empty:
            assert result.result_rows, f"cookbook query {name!r} returned no rows"
            assert result.column_names[0], name
    spread = loaded.client.query(cookbook_queries()["rank-spread-at-step"], parameters=params).named_results()
    loss = next(r for r in spread if r["metric"] == "loss")
    assert loss["spread"] == pytest.approx(0.01 * (WORLD - 1))
    assert loss["high_rank"] == WORLD - 1
    straggler = loaded.client.query(cookbook_queries()["straggler-history"], parameters=params).result_rows
    assert straggler[0][:2] == (WORLD - 1, STEPS)
    firing = loaded.client.query(cookbook_queries()["alerts-firing-now"], parameters=params).named_results()
    assert sorted(r["step"] for r in firing) == [20, 30]  # the one resolved is not firing any more
    by_rule = loaded.client.query(cookbook_queries()["alerts-by-team-rule"], parameters=params).named_results()
    assert [(r["rule"], r["alerts"]) for r in by_rule if r["team"] == "vision"] == [("straggler", 3)]


def test_invalid_messages_go_to_dlq_with_reason(loaded: Loaded) -> None:
    records = read_topic(loaded.settings, loaded.settings.topics.dlq, expected=3)
    reasons = sorted(json.loads(r.value)["reason"] for r in records)
    assert len(records) == 3
    assert any(r.startswith("not valid JSON") for r in reasons)
    assert any("rank 5 out of range" in r for r in reasons)
    assert any("field 'step'" in r or "must be an integer" in r for r in reasons)
    originals = {json.loads(r.value)["original"].encode("latin-1") for r in records}
    assert INVALID[0] in originals


def test_unknown_step_fields_are_kept(loaded: Loaded) -> None:
    extra = loaded.client.command(f"SELECT any(extra) FROM rankstream.steps WHERE run_id = '{RUN}'")
    assert json.loads(extra) == {"nonfinite": {}}


def test_rankstream_sql_goes_through_the_running_sink(loaded: Loaded) -> None:
    dsn = f"chdb://{loaded.store}"
    out = subprocess.run(
        [RANKSTREAM, "sql", "SELECT run_id, count() AS n FROM rankstream.runs FINAL GROUP BY run_id ORDER BY run_id",
         "--format", "json", "--dsn", dsn],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"run_id": RUN, "n": 1}, {"run_id": RUN2, "n": 1}]
    csv_out = subprocess.run(
        [RANKSTREAM, "sql", "SELECT 1 AS a, 'x' AS b", "--format", "csv", "--dsn", dsn],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert csv_out.stdout.strip().splitlines() == ["a,b", "1,x"]
    bad = subprocess.run(
        [RANKSTREAM, "sql", "SELEC 1", "--dsn", dsn], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "Code: 62" in bad.stderr and "Traceback" not in bad.stderr
    runs = subprocess.run(
        [RANKSTREAM, "runs", "--team", "nlp", "--since", "5000w", "--format", "json", "--dsn", dsn],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert runs.returncode == 0, runs.stderr
    listed = json.loads(runs.stdout)
    assert [r["run_id"] for r in listed] == [RUN2] and listed[0]["last_step"] == 29


def test_clickhouse_connect_reads_while_the_sink_writes(loaded: Loaded) -> None:
    """An unmodified HTTP client queries while a second run streams in."""
    extra = generate_run("run-live", 2, 200, team="vision", t0=1_750_200_000.0)
    seen: list[int] = []
    produce_events(loaded.settings, extra[: len(extra) // 2])
    reader = http_client(loaded.host, loaded.port)
    produce_events(loaded.settings, extra[len(extra) // 2 :])

    metric_rows = sum(len(e["metrics"]) for e in extra)

    def all_there() -> bool:
        n = int(reader.command("SELECT count() FROM rankstream.events WHERE run_id = 'run-live'"))
        seen.append(n)
        # a batch's metrics rows land a moment after its events rows
        m = int(reader.command("SELECT count() FROM rankstream.metrics WHERE run_id = 'run-live'"))
        return n == len(extra) and m == metric_rows

    wait_until(all_there, "the live run", interval_s=0.05)
    assert seen == sorted(seen)  # counts only grow while we read
    df = reader.query_df("SELECT rank, max(step) AS s FROM rankstream.metrics WHERE run_id = 'run-live' GROUP BY rank")
    assert sorted(df["s"].tolist()) == [199, 199]
    native = reader.query("SELECT metric, kind FROM rankstream.metrics WHERE run_id = 'run-live' LIMIT 1")
    assert native.column_types[0].name == "LowCardinality(String)"
    reader.close()


def test_sigterm_flushes_and_exits_zero_then_store_opens_directly(loaded: Loaded) -> None:
    code = loaded.sink.stop()
    assert code == 0
    assert "stopped after" in loaded.sink.log()
    assert not portfile.port_file(loaded.store).exists()
    out = subprocess.run(
        [RANKSTREAM, "sql", "SELECT count() AS n FROM rankstream.runs FINAL", "--dsn", f"chdb://{loaded.store}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[2].strip() == "3"
