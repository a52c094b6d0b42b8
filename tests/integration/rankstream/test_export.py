"""`rankstream export` of a run the real pipeline stored, read back with TensorBoard's reader and pyarrow."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rankstream.config import Settings
from tests.integration.rankstream.pipeline_store import FAULTS, WORLD_SIZE, PipelineStore, pipeline_store

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RUN = "run-export"


@pytest.fixture(scope="module")
def store(kafka_broker: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStore]:
    with pipeline_store(kafka_broker, tmp_path_factory.mktemp("export"), {RUN: list(FAULTS)}) as filled:
        yield filled


def export(store: PipelineStore, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rankstream.cli", "export", *args, "--dsn", store.dsn]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def accumulator(path: Path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_export_reads_back_as_the_stored_aggregates_and_rank_series(
    store: PipelineStore, tmp_path: Path
) -> None:
    run = store.runs[RUN]
    out = tmp_path / "tb"
    proc = export(store, RUN, "--format", "tensorboard", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("wrote ") and str(out) in proc.stdout
    root = accumulator(out)
    tags = set(root.Tags()["scalars"])
    assert {"loss/mean", "loss/min", "loss/max", "lr/mean", "grad_norm/max", "data_time_s/max"} <= tags
    by_step = {s["step"]: s for s in run.expected.steps}
    mean = root.Scalars("loss/mean")
    assert [p.step for p in mean] == sorted(run.steps)
    for point in mean:
        want = by_step[point.step]["metrics"]["loss"]["mean"]
        assert math.isclose(point.value, want, rel_tol=1e-6), (point.step, point.value, want)
    spike = next(f for f in FAULTS if f.kind == "loss_spike").step
    assert max(mean, key=lambda p: p.value).step == spike  # the spike is where it was injected
    highs = {p.step: p.value for p in root.Scalars("loss/max")}
    lows = {p.step: p.value for p in root.Scalars("loss/min")}
    assert all(lows[s] <= p.value <= highs[s] for s, p in ((p.step, p) for p in mean))
    # One TensorBoard run per rank, each with that rank's own value of every step.
    rank_dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert rank_dirs == [f"rank_{r:05d}" for r in range(WORLD_SIZE)]
    sent = {
        (e["rank"], e["step"]): float(e["metrics"]["data_time_s"])
        for e in run.events
        if e["kind"] == "step" and "data_time_s" in e["metrics"]
    }
    for rank in range(WORLD_SIZE):
        series = accumulator(out / f"rank_{rank:05d}").Scalars("data_time_s")
        got = {(rank, p.step): p.value for p in series}
        assert got == pytest.approx({k: v for k, v in sent.items() if k[0] == rank}, rel=1e-6)


def test_tensorboard_export_of_chosen_metrics_without_ranks(store: PipelineStore, tmp_path: Path) -> None:
    out = tmp_path / "tb"
    proc = export(store, RUN, "-f", "tensorboard", str(out), "--metric", "lr", "--no-ranks")
    assert proc.returncode == 0, proc.stderr
    assert set(accumulator(out).Tags()["scalars"]) == {"lr/mean", "lr/min", "lr/max"}
    assert not [p for p in out.iterdir() if p.is_dir()]


def test_parquet_export_holds_every_event_seq_step_and_alert_of_the_run(store: PipelineStore, tmp_path: Path) -> None:
    run = store.runs[RUN]
    out = tmp_path / "pq"
    proc = export(store, RUN, "--format", "parquet", str(out))
    assert proc.returncode == 0, proc.stderr
    files = {p.name for p in out.iterdir()}
    assert files == {f"{t}.parquet" for t in ("runs", "events", "metrics", "steps", "step_metrics", "alerts")}
    for name in files:
        meta = pq.ParquetFile(out / name).metadata
        if meta.num_row_groups:
            assert meta.row_group(0).column(0).compression == "ZSTD"
    events = pq.read_table(out / "events.parquet").to_pylist()
    sent = {(e["rank"], e["seq"]) for e in run.events}
    assert len(events) == len(run.events)
    assert {(e["rank"], e["seq"]) for e in events} == sent  # every seq of every rank, once
    metrics = pq.read_table(out / "metrics.parquet")
    assert metrics.num_rows == sum(len(e["metrics"]) for e in run.events)
    steps = pq.read_table(out / "steps.parquet").column("step").to_pylist()
    assert sorted(steps) == sorted(run.steps)
    alerts = pq.read_table(out / "alerts.parquet").to_pylist()
    assert sorted((a["alert_id"], a["state"] or "firing") for a in alerts) == sorted(
        (a["alert_id"], a.get("state", "firing")) for a in run.alert_records
    )
    runs = pq.read_table(out / "runs.parquet").to_pylist()
    assert [(r["run_id"], r["team"], r["status"]) for r in runs] == [(RUN, "nlp", "finished")]


@pytest.fixture
def s3_server() -> Iterator[tuple[str, dict[str, str]]]:
    """moto's S3 server on 127.0.0.1 (no network): its host:port and the AWS environment to reach it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        yield f"{host}:{port}", env
    finally:
        server.stop()


def test_parquet_export_to_s3_reads_back_from_the_bucket(
    store: PipelineStore, s3_server: tuple[str, dict[str, str]]
) -> None:
    endpoint, env = s3_server
    query = f"endpoint_override={endpoint}&scheme=http&region=us-east-1&allow_bucket_creation=true"
    uri = f"s3://archive/runs/{RUN}?{query}"
    proc = subprocess.run(
        [sys.executable, "-m", "rankstream.cli", "export", RUN, uri, "--format", "parquet", "--dsn", store.dsn],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr
    import pyarrow.fs as pafs

    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        fs, base = pafs.FileSystem.from_uri(uri)
        names = sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(base)))
        events = pq.read_table(f"{base}/events.parquet", filesystem=fs).to_pylist()
    assert names == sorted(f"{t}.parquet" for t in ("runs", "events", "metrics", "steps", "step_metrics", "alerts"))
    assert {(e["rank"], e["seq"]) for e in events} == {(e["rank"], e["seq"]) for e in store.runs[RUN].events}
    assert len(events) == len(store.runs[RUN].events)


def test_export_of_an_unknown_run_or_format_is_one_line(store: PipelineStore, tmp_path: Path) -> None:
    missing = export(store, "no-such-run", "--format", "parquet", str(tmp_path / "x"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == "rankstream: error: no run 'no-such-run' in the store"
    bad = export(store, RUN, "--format", "csv", str(tmp_path / "y"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    remote = export(store, RUN, "--format", "tensorboard", "s3://bucket/tb")
    assert remote.returncode == 1 and "local directory" in remote.stderr
