"""The Hugging Face and Lightning callbacks with the real libraries, tiny models built from config, CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rankstream.config import Settings
from tests.integration.producer.support import consume, finished, seq_problems

pytestmark = pytest.mark.kafka


class LoraLinear(torch.nn.Module):
    """A LoRA-style adapter around a frozen-or-not base layer (parameter names as PEFT gives them)."""

    def __init__(self, base: torch.nn.Module, n_in: int, n_out: int, rank: int = 4) -> None:
        super().__init__()
        self.base = base
        self.lora_A = torch.nn.Linear(n_in, rank, bias=False)
        self.lora_B = torch.nn.Linear(rank, n_out, bias=False)
        torch.nn.init.normal_(self.lora_B.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x))


class TokenDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(0, 64, (16,), generator=g)
        return {"input_ids": ids, "labels": ids.clone()}


def test_hf_trainer_callback(kafka: Settings, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    from rankstream.producer.hf import RankstreamCallback

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(cfg)
    attn = model.transformer.h[0].attn
    attn.c_attn = LoraLinear(attn.c_attn, 32, 96)

    hf_losses: dict[int, float] = {}

    class KeepLogs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                hf_losses[state.global_step] = logs["loss"]

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=6,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        warmup_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        hub_token="hf_AbCdEfGhIjKlMnOpQrStUv",
        disable_tqdm=True,
    )
    callback = RankstreamCallback(
        run_id="hf-run", settings=kafka, meta={"team": "nlp", "project": "p"}, max_events_per_s=0, heartbeat_s=0
    )
    Trainer(model=model, args=args, train_dataset=TokenDataset(), callbacks=[callback, KeepLogs()]).train()

    events = consume(kafka, finished("hf-run", 1))
    assert seq_problems(events, "hf-run") == {0: ([], [])}
    start = next(e for e in events if e["kind"] == "run_start")
    assert start["meta"]["team"] == "nlp" and start["meta"]["model_architecture"] == "GPT2LMHeadModel"
    assert start["meta"]["config"]["training_args"]["hub_token"] == "***"
    assert start["meta"]["config"]["model_config"]["n_embd"] == 32
    steps = {e["step"]: e for e in events if e["kind"] == "step"}
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    for step, event in steps.items():
        m = event["metrics"]
        assert m["loss"] == pytest.approx(hf_losses[step], abs=2e-3)  # rank 0 of 1: its loss is HF's loss
        assert {"lr", "grad_norm", "grad_norm_adapter", "grad_norm_backbone", "step_time_s"} <= set(m)
        assert m["grad_norm"] ** 2 == pytest.approx(m["grad_norm_adapter"] ** 2 + m["grad_norm_backbone"] ** 2)
        assert event["tags"]["precision"] == "fp32"
        assert event["tags"]["stage"] == ("warmup" if step <= 2 else "stable")
    assert all("data_time_s" in steps[s]["metrics"] for s in range(2, 7))
    assert next(e for e in events if e["kind"] == "run_end")["tags"]["status"] == "finished"


def test_lightning_callback(kafka: Settings, tmp_path: Path) -> None:
    import lightning as L

    from rankstream.producer.lightning import RankstreamLightningCallback

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)
            self.save_hyperparameters({"width": 4, "api_key": "sk-abcdefghijklmnopqrstu"})

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    callback = RankstreamLightningCallback(run_id="pl-run", settings=kafka, max_events_per_s=0, heartbeat_s=0)
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        devices=1,
        accumulate_grad_batches=2,
        val_check_interval=4,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[callback],
    )
    trainer.fit(Tiny(), loader, loader)

    events = consume(kafka, finished("pl-run", 1))
    assert seq_problems(events, "pl-run") == {0: ([], [])}
    start = next(e for e in events if e["kind"] == "run_start")
    assert start["meta"]["config"]["hparams"] == {"width": 4, "api_key": "***"}
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    for e in steps:
        assert {"loss", "lr", "grad_norm", "compute_time_s", "step_time_s"} <= set(e["metrics"])
        assert e["tags"] == {"precision": "fp32"}
    evals = [e for e in events if e["kind"] == "eval"]
    assert evals and "val_loss" in evals[0]["metrics"]
