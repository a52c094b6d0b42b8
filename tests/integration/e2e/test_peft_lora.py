"""A real PEFT LoRA (peft from PyPI on a tiny random Qwen2, CPU) through HF Trainer with the callback, a
real broker and a real stream worker: a healthy LoRA raises no adapter alert; a LoRA whose scaling makes the
adapter gradients ~1e-8 fires ``adapter_grad_vanishing``. The live grad norms are the ones Trainer logs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rankstream.config import Settings
from rankstream.kafka_admin import ensure_topics
from tests.integration.e2e.tiny_models import tiny_qwen2
from tests.integration.producer.support import consume, finished, seq_problems
from tests.integration.producer.test_frameworks import TokenDataset
from tests.integration.streamkit import WorkerProcess, collect

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

STEPS = 14  # adapter_grad_vanishing needs 10 consecutive steps


@pytest.fixture
def one_partition(kafka_broker: Settings, tmp_path: Path) -> Settings:
    """Both runs in one partition: the worker judges them in order, so once the second run's alert is out
    the first run has been judged in full."""
    settings = kafka_broker.with_overrides(
        topic_prefix=f"t{uuid.uuid4().hex[:10]}", state_dir=str(tmp_path / "state"), partitions=1
    )
    ensure_topics(settings)
    return settings


@pytest.fixture
def worker(one_partition: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(one_partition, tmp_path / "worker.log")
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


def _train_lora(settings: Settings, run_id: str, out: Path, *, lora_alpha: float, bind: bool) -> dict[int, float]:
    """Train a fresh LoRA for STEPS steps; returns Trainer's logged grad_norm per step."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from rankstream.producer.hf import RankstreamCallback

    logged: dict[int, float] = {}

    class KeepLogs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "grad_norm" in logs:
                logged[state.global_step] = logs["grad_norm"]

    base = tiny_qwen2(vocab_size=64, pad_token_id=0, eos_token_id=1)
    config = LoraConfig(r=4, lora_alpha=lora_alpha, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = get_peft_model(base, config)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    reporter_kwargs = {"run_id": run_id, "settings": settings, "max_events_per_s": 0, "heartbeat_s": 0}
    if bind:  # the trainer-bound form: loss and pre-clip norm read from this trainer
        trainer = Trainer(model=model, args=args, train_dataset=TokenDataset(), callbacks=[KeepLogs()])
        trainer.add_callback(RankstreamCallback(trainer=trainer, **reporter_kwargs))
    else:
        callback = RankstreamCallback(**reporter_kwargs)
        trainer = Trainer(model=model, args=args, train_dataset=TokenDataset(), callbacks=[callback, KeepLogs()])
    trainer.train()
    return logged


def _steps(events: list[dict], run_id: str) -> dict[int, dict[str, float]]:
    return {e["step"]: e["metrics"] for e in events if e["run_id"] == run_id and e["kind"] == "step"}


def test_lora_adapter_gradients_live(one_partition: Settings, worker: WorkerProcess, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    healthy, vanishing = f"lora-ok-{uuid.uuid4().hex[:6]}", f"lora-tiny-{uuid.uuid4().hex[:6]}"
    torch.manual_seed(0)
    healthy_log = _train_lora(one_partition, healthy, tmp_path / "ok", lora_alpha=8, bind=False)
    torch.manual_seed(0)
    vanishing_log = _train_lora(one_partition, vanishing, tmp_path / "tiny", lora_alpha=4e-6, bind=True)

    events = consume(one_partition, lambda ev: finished(healthy, 1)(ev) and finished(vanishing, 1)(ev))
    assert seq_problems(events, healthy) == {0: ([], [])} and seq_problems(events, vanishing) == {0: ([], [])}
    for run_id, logged in ((healthy, healthy_log), (vanishing, vanishing_log)):
        steps = _steps(events, run_id)
        assert sorted(steps) == sorted(logged) == list(range(1, STEPS + 1))
        for step, m in steps.items():
            assert m["grad_norm_backbone"] == 0.0  # PEFT froze the backbone
            assert m["grad_norm"] == pytest.approx(logged[step], rel=1e-5)  # what Trainer logs, pre-clip
            assert m["grad_norm_adapter"] == pytest.approx(m["grad_norm"], rel=1e-5)
    assert min(m["grad_norm_adapter"] for m in _steps(events, healthy).values()) > 1e-3
    assert max(m["grad_norm_adapter"] for m in _steps(events, vanishing).values()) < 1e-6

    alerts = collect(
        one_partition,
        one_partition.topics.alerts,
        lambda r: any(a["run_id"] == vanishing and a["rule"] == "adapter_grad_vanishing" for a in r),
        60,
    )
    fired = [a for a in alerts if a["run_id"] == vanishing and a["rule"] == "adapter_grad_vanishing"]
    assert fired, worker.log()
    assert fired[0]["step"] == 10  # the tenth consecutive vanishing step
    assert fired[0]["severity"] == "warning"
    assert not [a for a in alerts if a["run_id"] == healthy and "grad" in a["rule"]]
