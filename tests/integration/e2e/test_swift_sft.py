"""Real ``swift sft`` (ms-swift from PyPI; tiny random Qwen2, local data, LoRA, CPU, offline) with the
rankstream plugin loaded as a user would (``--external_plugins``/``--callbacks``), a real broker and a
real stream worker: the live events agree with the ``logging.jsonl`` the same run wrote, and gradients
driven to NaN fire ``nonfinite_grad`` live although ms-swift drops them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.kafka_admin import ensure_topics
from rankstream.metric_names import SUMMARY_KEYS, map_metrics, to_number
from tests.integration.e2e.tiny_models import save_tiny_qwen2, write_chat_jsonl
from tests.integration.producer.support import consume, finished, seq_problems
from tests.integration.streamkit import WorkerProcess, collect

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MAX_STEPS = 8
NAN_FROM_STEP = 7  # steps 7 and 8: every gradient NaN (the loss stays finite)
MAX_GRAD_NORM = 0.05  # below the healthy pre-clip norms (~0.7): every healthy step is clipped
EVAL_STEPS = 4

# A second plugin, the fault: from NAN_FROM_STEP on, a gradient hook turns a LoRA weight's gradient NaN,
# so the total norm is NaN and ms-swift sets every p.grad to None before optimizer.step().
NAN_PLUGIN = f"""
import math
from swift.callbacks import TrainerCallback, callbacks_map


class NanGrads(TrainerCallback):
    poison = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        weight = next(p for p in model.parameters() if p.requires_grad)
        weight.register_hook(lambda g: g * math.nan if self.poison else g)

    def on_step_begin(self, args, state, control, **kwargs):
        self.poison = state.global_step + 1 >= {NAN_FROM_STEP}


callbacks_map["nan_grads"] = NanGrads
"""


@dataclass(frozen=True)
class SwiftRun:
    settings: Settings
    run_id: str
    events: list[dict]
    log_lines: list[dict]
    alerts: list[dict]
    worker_rc: int
    worker_log: str


def _plugin_path() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "rankstream.integrations.swift_plugin"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.fixture(scope="module")
def swift_run(kafka_broker: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftRun]:
    tmp = tmp_path_factory.mktemp("swift")
    settings = kafka_broker.with_overrides(
        topic_prefix=f"t{uuid.uuid4().hex[:10]}", state_dir=str(tmp / "state"), partitions=1
    )
    ensure_topics(settings)
    run_id = f"swift-{uuid.uuid4().hex[:8]}"
    model_dir = save_tiny_qwen2(tmp / "model")
    (tmp / "nan_plugin.py").write_text(NAN_PLUGIN)
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "MODELSCOPE_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "RANKSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "RANKSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "RANKSTREAM_STATE_DIR": settings.state_dir,
        "RANKSTREAM_RUN_ID": run_id,
        "RANKSTREAM_META": json.dumps({"team": "nlp", "project": "swift-e2e"}),
    }
    swift = Path(sys.executable).with_name("swift")
    cmd = [
        str(swift), "sft",
        "--model", str(model_dir), "--model_type", "qwen2", "--template", "qwen",
        "--dataset", str(write_chat_jsonl(tmp / "train.jsonl", 64)),
        "--val_dataset", str(write_chat_jsonl(tmp / "val.jsonl", 4, offset=100)),
        "--tuner_type", "lora",
        "--max_steps", str(MAX_STEPS),
        "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "2",
        "--max_grad_norm", str(MAX_GRAD_NORM),
        "--logging_steps", "1",
        "--eval_strategy", "steps", "--eval_steps", str(EVAL_STEPS),
        "--save_strategy", "no",
        "--report_to", "none",
        "--dataloader_num_workers", "0",
        "--dataset_num_proc", "1",
        "--check_model", "false",
        "--output_dir", str(tmp / "out"),
        "--external_plugins", _plugin_path(), str(tmp / "nan_plugin.py"),
        "--callbacks", "rankstream", "nan_grads",
    ]  # fmt: skip
    worker = WorkerProcess(settings, tmp / "worker.log")
    try:
        swift_log = tmp / "swift.log"
        with swift_log.open("wb") as log:
            rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300).returncode
        assert rc == 0, swift_log.read_text(errors="replace")[-4000:]
        events = [e for e in consume(settings, finished(run_id, 1)) if e["run_id"] == run_id]
        alerts = collect(settings, settings.topics.alerts, lambda r: any(a["rule"] == "nonfinite_grad" for a in r), 60)
    finally:
        worker_rc = worker.stop()
    (log_file,) = (tmp / "out").rglob("logging.jsonl")
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    yield SwiftRun(settings, run_id, events, lines, alerts, worker_rc, worker.log())


def _step_of(line: dict) -> int:
    return int(str(line["global_step/max_steps"]).split("/")[0])


def _train_lines(lines: list[dict]) -> dict[int, dict]:
    return {
        _step_of(line): line
        for line in lines
        if "global_step/max_steps" in line and not any(k.startswith("eval_") or k in SUMMARY_KEYS for k in line)
    }


def _num(value: object) -> float:
    number = to_number(value)
    assert number is not None, value
    return number


def _agree(live: float, logged: float) -> bool:
    """ms-swift rounds what it writes to 8 decimals; NaN agrees with NaN."""
    if math.isnan(logged):
        return math.isnan(live)
    return math.isclose(live, logged, rel_tol=1e-5, abs_tol=2e-8)


def test_live_events_agree_with_the_log_of_the_same_run(swift_run: SwiftRun) -> None:
    events, run_id = swift_run.events, swift_run.run_id
    assert seq_problems(events, run_id) == {0: ([], [])}
    start = next(e for e in events if e["kind"] == "run_start")
    assert start["meta"]["team"] == "nlp" and start["meta"]["project"] == "swift-e2e"
    steps = {e["step"]: e for e in events if e["kind"] == "step"}
    logged = _train_lines(swift_run.log_lines)
    assert sorted(logged) == list(range(1, MAX_STEPS + 1))
    assert sorted(steps) == sorted(logged)
    mismatches = []
    for step, line in logged.items():
        live = steps[step]["metrics"]
        # the importer's reading of the same line: every metric it finds, under the same name
        expected = map_metrics(line)
        expected.pop("step_time_s", None)  # ms-swift's is the mean since the start; live is this step's
        expected.pop("mem_peak_mb", None)  # CUDA only
        assert {"loss", "grad_norm", "lr", "token_acc", "epoch"} <= set(expected), line
        for name, value in expected.items():
            if name not in live or not _agree(_num(live[name]), value):
                mismatches.append((step, name, live.get(name), value))
        assert steps[step]["tags"]["precision"] == "fp32"  # float32 weights on CPU, whatever fp16=True says
    assert not mismatches
    healthy = [_num(steps[s]["metrics"]["grad_norm"]) for s in range(1, NAN_FROM_STEP)]
    assert min(healthy) > MAX_GRAD_NORM  # the pre-clip norm, not one capped at max_grad_norm
    for step in range(NAN_FROM_STEP, MAX_STEPS + 1):  # ms-swift dropped these gradients; the NaN is reported
        assert math.isnan(_num(steps[step]["metrics"]["grad_norm"]))


def test_eval_events_carry_the_logged_eval_metrics_only(swift_run: SwiftRun) -> None:
    evals = {e["step"]: e["metrics"] for e in swift_run.events if e["kind"] == "eval"}
    logged = {_step_of(line): line for line in swift_run.log_lines if any(k.startswith("eval_") for k in line)}
    assert sorted(evals) == sorted(logged) == [EVAL_STEPS, 2 * EVAL_STEPS]
    for step, line in logged.items():
        expected = map_metrics(line, eval_line=True)
        expected.pop("mem_peak_mb", None)
        assert "eval_loss" in expected and "eval_token_acc" in expected
        assert set(evals[step]) == set(expected)  # no progress text, no training speed
        for name, value in expected.items():
            assert _agree(_num(evals[step][name]), value), (step, name)


def test_nan_gradients_fire_nonfinite_grad_live(swift_run: SwiftRun) -> None:
    assert swift_run.worker_rc == 0, swift_run.worker_log
    fired = [a for a in swift_run.alerts if a["run_id"] == swift_run.run_id and a["rule"] == "nonfinite_grad"]
    assert fired, swift_run.worker_log
    assert min(a["step"] for a in fired) == NAN_FROM_STEP
    assert all(a["severity"] == "critical" for a in fired)  # fp32: no loss scaler to explain it
