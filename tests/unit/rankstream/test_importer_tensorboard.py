"""TensorBoard event files written by the real writers (tests/fixtures/importers/tb_*) into v1 events."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from rankstream.importers import ImportResult, TensorBoardMissing, import_tensorboard
from rankstream.importers.tb_tags import tag_key
from rankstream.importers.tfevents import EventFile, Scalar, event_files, launch_numbers, read_event_file
from rankstream.schema import dumps, validate_event
from rankstream.stream_jobs.core import Engine
from tests.paths import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "importers"


def _import(name: str) -> ImportResult:
    return import_tensorboard(FIXTURES / name, run_id="tb")


def _valid(result: ImportResult) -> list[dict[str, Any]]:
    return [validate_event(json.loads(dumps(e))) for e in result.events]


def _fired(events: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    engine = Engine()
    out = engine.process_many(events)
    out.extend(engine.finish())
    return [(a["rule"], a["severity"], a["step"]) for a in out.alerts if a.get("state", "firing") == "firing"]


def _steps(events: list[dict[str, Any]], kind: str = "step") -> list[int]:
    return [e["step"] for e in events if e["kind"] == kind]


def _wall_times(name: str) -> list[float]:
    return sorted(s.wall_time for p in event_files(FIXTURES / name) for s in read_event_file(p).scalars)


def test_hf_trainer_callback_run_steps_evals_summary_and_the_injected_spike() -> None:
    result = _import("tb_hf_trainer")
    assert result.errors == [] and result.source == "tensorboard"
    events = _valid(result)
    assert _steps(events) == list(range(1, 81))
    assert _steps(events, "eval") == [20, 40, 60, 80]
    step1 = events[1]["metrics"]
    assert {"loss", "lr", "grad_norm", "epoch"} <= step1.keys()
    assert step1["lr"] == 0.05  # float32 0.05 read back as the 0.05 the trainer logged
    assert not any(k.startswith(("train_", "eval_")) for k in step1)
    evals = [e for e in events if e["kind"] == "eval"]
    assert all("eval_loss" in e["metrics"] and "epoch" not in e["metrics"] for e in evals)
    end = events[-1]
    assert end["kind"] == "run_end" and end["tags"]["status"] == "finished" and end["step"] == 80
    assert {"train_runtime", "train_loss"} <= end["metrics"].keys()
    # every event is stamped with its scalars' own wall time
    walls = _wall_times("tb_hf_trainer")
    assert events[0]["ts"] == walls[0]
    assert {e["ts"] for e in events if e["kind"] in ("step", "eval")} <= set(walls)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert _fired(events) == [("loss_spike", "critical", 70)]


def test_megatron_tags_two_launches_and_a_nan_grad_norm() -> None:
    result = _import("tb_megatron")
    events = _valid(result)
    assert [(e["kind"], e["inc"]) for e in events if e["kind"] == "run_start"] == [
        ("run_start", "launch-1"),
        ("run_start", "launch-2"),
    ]
    launch1 = [e["step"] for e in events if e["kind"] == "step" and e["inc"] == "launch-1"]
    launch2 = [e["step"] for e in events if e["kind"] == "step" and e["inc"] == "launch-2"]
    assert launch1 == [10, 20, 30, 40, 50] and launch2 == [50, 60, 70, 80, 90, 100]
    for inc in ("launch-1", "launch-2"):
        seqs = [e["seq"] for e in events if e["inc"] == inc]
        assert seqs == list(range(len(seqs)))
    assert _steps(events, "eval") == [20, 40, 60, 80, 100]
    m = events[1]["metrics"]
    assert m["loss"] == pytest.approx(7.0 * math.exp(-10 / 60) + 2.0, rel=1e-6)
    assert m["lr"] == 7.5e-05 and m["grad_norm"] == 1.3 and m["step_time_s"] == 0.5
    assert m["mem_peak_mb"] == pytest.approx(30 * 1024) and m["batch_size"] == 32  # bytes in a float32
    assert "loss_scale" not in m  # 1.0 throughout: a bf16 run
    assert not any("samples" in k for e in events for k in e["metrics"])  # the "vs samples" twins
    eval20 = next(e for e in events if e["kind"] == "eval")["metrics"]
    assert set(eval20) == {"eval_loss", "eval_lm_loss_ppl"}
    assert math.isnan(next(e for e in events if e["step"] == 70 and e["kind"] == "step")["metrics"]["grad_norm"])
    assert result.ignored > 0
    stats_engine = Engine()
    stats_engine.process_many(events)
    assert stats_engine.stats["restarts"] == 1
    assert _fired(events) == [("nonfinite_grad", "critical", 70)]


def test_lightning_logger_names() -> None:
    events = _valid(_import("tb_lightning/lightning_logs"))
    steps = [e for e in events if e["kind"] == "step"]
    assert steps and all({"loss", "lr", "epoch"} <= e["metrics"].keys() for e in steps)
    assert steps[0]["metrics"]["lr"] == 0.05
    evals = [e for e in events if e["kind"] == "eval"]
    assert len(evals) == 3 and all(set(e["metrics"]) == {"eval_loss"} for e in evals)
    assert events[-1]["tags"]["status"] == "unknown"  # Lightning logs no train() summary


def test_plain_summary_writer_tutorial_tags_and_histograms_ignored() -> None:
    [path] = event_files(FIXTURES / "tb_plain")
    result = import_tensorboard(path, run_id="plain")
    events = _valid(result)
    assert _steps(events) == list(range(1, 31))
    assert events[1]["metrics"] == {"loss": 1.0, "lr": 0.01}
    assert [(e["step"], e["metrics"]) for e in events if e["kind"] == "eval"] == [
        (10, {"eval_loss": 0.12}),
        (20, {"eval_loss": 0.06}),
        (30, {"eval_loss": 0.04}),
    ]
    assert result.ignored == 3  # the three weight histograms


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("train/loss", ("train", "loss")),
        ("train/learning_rate", ("train", "learning_rate")),
        ("train/train_runtime", ("train", "train_runtime")),
        ("eval/loss", ("eval", "eval_loss")),
        ("test/loss", None),
        ("lm loss", ("train", "lm loss")),
        ("lm loss vs samples", None),
        ("lm loss validation", ("eval", "eval_lm loss")),
        ("lm loss validation ppl", ("eval", "eval_lm loss_ppl")),
        ("lm loss validation-wiki", ("eval", "eval_lm loss_wiki")),
        ("learning-rate", ("train", "learning-rate")),
        ("train_loss", ("train", "loss")),
        ("train_loss_step", ("train", "loss")),
        ("train_loss_epoch", ("train", "loss_epoch")),
        ("val_loss", ("eval", "eval_loss")),
        ("val/acc", ("eval", "eval_acc")),
        ("lr-AdamW", ("train", "lr")),
        ("hp_metric", None),
        ("Loss/train", ("train", "loss")),
        ("Loss/test", ("eval", "eval_loss")),
        ("Accuracy/val", ("eval", "eval_Accuracy")),
        ("rewards/chosen", ("train", "rewards/chosen")),
        ("epoch", ("train", "epoch")),
    ],
)
def test_tag_keys(tag: str, expected: tuple[str, str] | None) -> None:
    assert tag_key(tag) == expected


def _file(first: float, last: float) -> EventFile:
    return EventFile(Path(f"f{first}"), [Scalar(first, 1, "loss", 1.0), Scalar(last, 2, "loss", 1.0)])


def test_a_file_that_starts_after_the_others_ended_is_a_new_launch() -> None:
    # two writers of one process (overlapping), then a restart, then another
    assert launch_numbers([_file(0, 10), _file(1, 9), _file(20, 30), _file(40, 50)]) == [0, 0, 1, 2]


def test_a_cut_event_file_keeps_its_whole_records(tmp_path: Path) -> None:
    [source] = event_files(FIXTURES / "tb_plain")
    whole = read_event_file(source).scalars
    cut = tmp_path / source.name
    cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    result = import_tensorboard(cut, run_id="cut")
    kept = [e for e in _valid(result) if e["kind"] == "step"]
    assert 0 < len(kept) < 30
    assert [e["metrics"]["loss"] for e in kept] == [s.value for s in whole if s.tag == "Loss/train"][: len(kept)]


def test_without_the_tensorboard_package_one_line_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(FIXTURES / "tb_plain", tmp_path / "run")
    monkeypatch.setitem(sys.modules, "tensorboard.backend.event_processing.event_file_loader", None)
    with pytest.raises(TensorBoardMissing, match="needs the tensorboard package: pip install tensorboard"):
        import_tensorboard(tmp_path / "run", run_id="x")
