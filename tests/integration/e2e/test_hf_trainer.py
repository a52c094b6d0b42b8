"""A second real client end to end: Hugging Face Trainer on 2 gloo ranks with the rankstream
callback -> real Kafka -> stream worker -> sink -> embedded ClickHouse store."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest
import torch

from rankstream.config import Settings
from tests.integration.producer.test_frameworks import TokenDataset
from tests.integration.sinks.support import SinkProcess, http_client, wait_until
from tests.integration.streamkit import WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

WORLD_SIZE = 2
MAX_STEPS = 6


def _train_rank(rank: int, settings: Settings, run_id: str, port: int, out_dir: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD_SIZE),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from rankstream.producer.hf import RankstreamCallback

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2))
    args = TrainingArguments(
        output_dir=out_dir,
        max_steps=MAX_STEPS,
        per_device_train_batch_size=2,
        warmup_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        ddp_backend="gloo",
        disable_tqdm=True,
    )
    callback = RankstreamCallback(
        run_id=run_id, settings=settings, meta={"team": "nlp", "run_name": "hf-e2e"}, heartbeat_s=0
    )
    Trainer(model=model, args=args, train_dataset=TokenDataset(), callbacks=[callback]).train()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hf_trainer_two_ranks_through_the_whole_stack(kafka: Settings, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    run_id = f"hf-e2e-{uuid.uuid4().hex[:8]}"
    store = tmp_path / "store"
    worker = WorkerProcess(kafka, tmp_path / "worker.log")
    sink = SinkProcess(kafka, f"chdb://{store}", tmp_path / "sink.log").start()
    try:
        host, port = sink.wait_ready(store)
        mp.start_processes(
            _train_rank,
            args=(kafka, run_id, _free_port(), str(tmp_path / "out")),
            nprocs=WORLD_SIZE,
            join=True,
            start_method="spawn",
        )
        client = http_client(host, port)

        def aligned() -> list[tuple]:
            rows = client.query(
                "SELECT step, ranks_reported, complete FROM rankstream.steps FINAL "
                "WHERE run_id = {r:String} ORDER BY step",
                parameters={"r": run_id},
            ).result_rows
            # a batch's step_metrics rows land a moment after its steps rows
            loss_rows = client.command(
                "SELECT count() FROM rankstream.step_metrics FINAL WHERE run_id = {r:String} AND metric = 'loss'",
                parameters={"r": run_id},
            )
            return rows if len(rows) == MAX_STEPS and int(loss_rows) == MAX_STEPS else []

        steps = wait_until(aligned, "aligned steps of the HF run in the store", timeout_s=120)
        per_rank = client.query(
            "SELECT rank, groupArray(step) FROM (SELECT rank, step FROM rankstream.events FINAL "
            "WHERE run_id = {r:String} AND kind = 'step' ORDER BY step) GROUP BY rank ORDER BY rank",
            parameters={"r": run_id},
        ).result_rows
        seqs = client.query(
            "SELECT rank, count(), uniqExact(seq), max(seq) FROM rankstream.events FINAL "
            "WHERE run_id = {r:String} GROUP BY rank ORDER BY rank",
            parameters={"r": run_id},
        ).result_rows
        losses = client.query(
            "SELECT s.step, s.mean, r.avg_loss FROM rankstream.step_metrics AS s FINAL "
            "INNER JOIN (SELECT step, avg(value) AS avg_loss FROM rankstream.metrics FINAL "
            "WHERE run_id = {r:String} AND metric = 'loss' GROUP BY step) AS r ON r.step = s.step "
            "WHERE s.run_id = {r:String} AND s.metric = 'loss' ORDER BY s.step",
            parameters={"r": run_id},
        ).result_rows
        team = client.query(
            "SELECT team FROM rankstream.runs FINAL WHERE run_id = {r:String}", parameters={"r": run_id}
        )
    finally:
        worker_rc = worker.stop()
        sink.stop()  # stopped even when the worker's exit code fails the test
        assert worker_rc == 0, worker.log()
    assert [s for s, _, _ in steps] == list(range(1, MAX_STEPS + 1))
    assert all(n == WORLD_SIZE and complete for _, n, complete in steps)
    assert per_rank == [(r, list(range(1, MAX_STEPS + 1))) for r in range(WORLD_SIZE)]
    for _rank, total, unique, max_seq in seqs:  # every seq of every rank, none twice
        assert total == unique == max_seq + 1
    assert len(losses) == MAX_STEPS
    for _step, aligned_mean, raw_mean in losses:  # the aligned mean is the all-reduce average
        assert aligned_mean == pytest.approx(raw_mean)
    assert team.result_rows == [("nlp",)]
