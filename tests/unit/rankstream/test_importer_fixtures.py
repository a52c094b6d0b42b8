"""The importers over logs shaped as ms-swift, Megatron-swift and transformers write them (tests/fixtures/importers)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from rankstream.importers import ImportResult, import_hf_trainer_state, import_swift_jsonl, sniff_format
from rankstream.schema import dumps, validate_event
from rankstream.stream_jobs.core import Engine
from tests.paths import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "importers"
END = 1_750_000_000.0


def _swift(name: str) -> ImportResult:
    with (FIXTURES / name).open("rb") as fh:
        return import_swift_jsonl(fh, run_id="r", end_ts=END)


def _kinds(result: ImportResult) -> list[tuple[str, int]]:
    return [(e["kind"], e["step"]) for e in result.events]


def _valid(result: ImportResult) -> list[dict[str, Any]]:
    return [validate_event(json.loads(dumps(e))) for e in result.events]


def _alerts(result: ImportResult) -> list[tuple[str, str, int]]:
    engine = Engine()
    out = engine.process_many(_valid(result))
    out.extend(engine.finish())
    return [(a["rule"], a["severity"], a["step"]) for a in out.alerts]


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("swift_finished/logging.jsonl", "swift"),
        ("swift_crashed/logging.jsonl", "swift"),
        ("swift_3_0/logging.jsonl", "swift"),
        ("swift_rlhf/dpo_logging.jsonl", "swift"),
        ("swift_rlhf/grpo_logging.jsonl", "swift"),
        ("megatron_3x/logging.jsonl", "swift"),
        ("megatron_4x/logging.jsonl", "swift"),
        ("hf_trainer_state/trainer_state.json", "hf"),
    ],
)
def test_format_from_the_first_object(path: str, fmt: str) -> None:
    assert sniff_format((FIXTURES / path).read_text()[:65536]) == fmt


def test_finished_swift_run_steps_evals_and_summary_on_run_end() -> None:
    result = _swift("swift_finished/logging.jsonl")
    assert result.errors == []
    assert _kinds(result) == [
        ("run_start", 0),
        ("step", 5),
        ("step", 10),
        ("eval", 10),
        ("step", 15),
        ("step", 20),
        ("eval", 20),
        ("run_end", 20),
    ]
    events = _valid(result)
    step5 = events[1]["metrics"]
    assert step5["loss"] == 2.1 and step5["lr"] == 7.6e-05 and step5["mem_peak_mb"] == 17.35 * 1024
    assert step5["step_time_s"] == 6.2 and step5["token_acc"] == 0.5
    for ev in events:
        assert not {"memory_GiB", "train_speed_s_it", "global_step_max_steps", "learning_rate"} & ev["metrics"].keys()
    assert all("step_time_s" not in e["metrics"] for e in events if e["kind"] == "eval")
    end = events[-1]["metrics"]
    assert end["train_runtime"] == 128.0 and end["train_loss"] == 1.9875 and end["best_metric"] == 1.6
    assert end["mem_peak_mb"] == 17.41 * 1024 and "step_time_s" not in end
    # the file was last written when the run ended: the run starts train_runtime (or the last elapsed_time) before
    assert events[0]["ts"] == END - 128.0
    assert events[1]["ts"] == pytest.approx(END - 128.0 + 31)  # "elapsed_time": "31s"
    assert max(e["ts"] for e in events[:-1]) <= END


def test_crashed_swift_run_keeps_every_whole_line() -> None:
    result = _swift("swift_crashed/logging.jsonl")
    assert len(result.errors) == 1 and result.errors[0].startswith("line 5: not valid JSON")
    assert [k for k in _kinds(result) if k[0] in ("step", "eval")] == [
        ("step", 5),
        ("step", 10),
        ("eval", 10),
        ("step", 15),
    ]
    events = _valid(result)
    assert events[-2]["ts"] == END  # the last whole line (1m 33s) was the last write
    assert events[1]["ts"] == END - 93 + 31


def test_swift_3_0_speed_in_iterations_per_second() -> None:
    events = _valid(_swift("swift_3_0/logging.jsonl"))
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert steps[0]["metrics"]["step_time_s"] == pytest.approx(4.4, rel=1e-3)  # 1 / 0.227273 it/s
    assert "percentage" not in steps[0]["metrics"] and steps[0]["metrics"]["acc"] == 0.51


def test_dpo_and_grpo_keys_become_valid_sql_friendly_names() -> None:
    dpo = _valid(_swift("swift_rlhf/dpo_logging.jsonl"))
    assert [e["kind"] for e in dpo] == ["run_start", "step", "step", "step", "eval", "run_end"]
    assert dpo[1]["metrics"]["rewards_chosen"] == 0.01 and dpo[1]["metrics"]["logps_rejected"] == -295.7
    assert dpo[4]["step"] == 3 and dpo[4]["metrics"]["eval_rewards_margins"] == 0.05
    assert "step_time_s" not in dpo[4]["metrics"]
    grpo = _valid(_swift("swift_rlhf/grpo_logging.jsonl"))
    names = set(grpo[1]["metrics"])
    assert {"reward", "reward_std", "kl", "rewards_AccuracyORM_mean", "completions_mean_length"} <= names
    assert {"clip_ratio_region_mean", "entropy_mean", "loss", "lr", "grad_norm", "step_time_s"} <= names
    for ev in dpo + grpo:
        for name in ev["metrics"]:
            assert name.replace("_", "").isalnum(), name


def test_megatron_3x_lm_loss_iteration_steps_and_no_fp16_guess() -> None:
    result = _swift("megatron_3x/logging.jsonl")
    assert result.errors == [] and result.source == "megatron-swift"
    events = _valid(result)
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == list(range(10, 101, 10))
    assert steps[0]["metrics"]["loss"] == 2.34 and steps[0]["metrics"]["step_time_s"] == 1.37
    assert all("loss_scale" not in e["metrics"] for e in events)  # 1.0 throughout: no dynamic scaler
    evals = [(e["step"], e["metrics"]) for e in events if e["kind"] == "eval"]
    assert evals == [(50, {"eval_loss": 2.0}), (100, {"eval_loss": 1.8})]
    assert math.isnan(steps[3]["metrics"]["loss"])
    # before: 'lm loss' was no loss (the NaN raised nothing) and loss_scale 1.0 made the NaN grad an fp16 "info"
    assert _alerts(result) == [("nonfinite_loss", "critical", 40), ("nonfinite_grad", "critical", 70)]


def test_megatron_3x_loss_scale_kept_when_it_moves(tmp_path: Path) -> None:
    lines = (FIXTURES / "megatron_3x/logging.jsonl").read_text().splitlines()
    moved = [
        line.replace('"loss_scale": 1.0', '"loss_scale": 65536.0', 1) if i == 0 else line
        for i, line in enumerate(lines)
    ]
    events = _valid(import_swift_jsonl(moved, run_id="r"))
    assert [e["metrics"].get("loss_scale") for e in events if e["kind"] == "step"][:2] == [65536.0, 1.0]


def test_megatron_4x_iteration_and_final_line() -> None:
    result = _swift("megatron_4x/logging.jsonl")
    assert result.errors == []
    kinds = _kinds(result)
    assert [s for k, s in kinds if k == "step"] == list(range(10, 101, 10))
    assert [s for k, s in kinds if k == "eval"] == [50, 100] and kinds[-1] == ("run_end", 100)
    events = _valid(result)
    assert all("step_time_s" not in e["metrics"] for e in events if e["kind"] == "eval")
    assert events[1]["metrics"] == {
        "loss": 2.34,
        "grad_norm": 1.27,
        "lr": 9.5e-06,
        "mem_peak_mb": 40.07 * 1024,
        "step_time_s": 1.42,
    }
    assert events[0]["ts"] == END - 148  # the last eval line: "2m 28s"
    assert _alerts(result) == []


def test_hf_trainer_state_file() -> None:
    result = import_hf_trainer_state((FIXTURES / "hf_trainer_state/trainer_state.json").read_bytes(), run_id="r")
    assert result.errors == []
    assert [k for k in _kinds(result) if k[0] != "run_start"] == [
        ("step", 5), ("step", 10), ("eval", 10), ("step", 15), ("step", 20), ("eval", 20), ("run_end", 20)
    ]  # fmt: skip
    events = _valid(result)
    assert events[1]["metrics"] == {"epoch": 0.25, "grad_norm": 1.8, "lr": 7.6e-05, "loss": 2.1, "token_acc": 0.5}


def test_finished_swift_log_and_its_trainer_state_give_the_same_steps() -> None:
    swift = [(e["kind"], e["step"], e["metrics"].get("loss")) for e in _swift("swift_finished/logging.jsonl").events]
    hf_path = FIXTURES / "hf_trainer_state/trainer_state.json"
    hf = [
        (e["kind"], e["step"], e["metrics"].get("loss"))
        for e in import_hf_trainer_state(hf_path.read_bytes(), run_id="r").events
    ]
    assert swift == hf


def test_final_state_line_alone_reads_its_log_history() -> None:
    final = (FIXTURES / "swift_finished/logging.jsonl").read_text().splitlines()[-1]
    assert sniff_format(final) == "swift"
    result = import_swift_jsonl([final], run_id="r", end_ts=END)
    assert [k for k in _kinds(result) if k[0] == "step"] == [("step", 5), ("step", 10), ("step", 15), ("step", 20)]
    assert result.events[-1]["metrics"]["train_runtime"] == 128.0
    assert result.events[-1]["metrics"]["mem_peak_mb"] == 17.41 * 1024  # the final line's "memory" (GiB)


def _end_tags(result: ImportResult) -> tuple[str, str]:
    end = result.events[-1]
    assert end["kind"] == "run_end"
    return end["tags"]["status"], end["tags"]["reason"]


def test_a_log_says_how_its_run_ended() -> None:
    """Only a log with the trainer's summary is a finished run; a killed run's log is never 'finished'."""
    assert _end_tags(_swift("swift_finished/logging.jsonl")) == ("finished", "normal")
    assert _end_tags(_swift("swift_crashed/logging.jsonl")) == ("unknown", "log_ends_without_summary")
    finished = (FIXTURES / "swift_finished/logging.jsonl").read_text().splitlines()
    summary = [i for i, line in enumerate(finished) if "train_runtime" in json.loads(line)]
    assert summary, "the finished fixture has the train() summary line"
    raised = "\n".join(line for i, line in enumerate(finished) if i not in summary)  # the finally: line stays
    result = import_swift_jsonl(io.BytesIO(raised.encode()), run_id="r", end_ts=END)
    assert _end_tags(result) == ("failed", "no_train_summary")
    state = json.loads((FIXTURES / "hf_trainer_state/trainer_state.json").read_text())  # a checkpoint's state
    assert _end_tags(import_hf_trainer_state(state, run_id="r", end_ts=END))[0] == "unknown"
    state["log_history"].append({"train_runtime": 128.0, "train_loss": 1.9875, "epoch": 1.0, "step": 20})
    assert _end_tags(import_hf_trainer_state(state, run_id="r", end_ts=END))[0] == "finished"
