"""`rankstream replay|import` over TensorBoard event files and captured stdout logs: sniffing, summaries, errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rankstream.cli import app
from rankstream.importers import sniff_path
from tests.paths import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "importers"
runner = CliRunner()


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("tb_hf_trainer", "tensorboard"),
        ("tb_megatron", "tensorboard"),
        ("tb_lightning/lightning_logs/version_0", "tensorboard"),
        ("log_hf_trainer/train.log", "log"),
        ("log_megatron/train.log", "log"),
        ("log_torchrun/train.log", "log"),
        ("swift_finished/logging.jsonl", "swift"),
        ("hf_trainer_state/trainer_state.json", "hf"),
    ],
)
def test_auto_format(path: str, fmt: str) -> None:
    target = FIXTURES / path
    head = "" if target.is_dir() else target.read_bytes()[: 1 << 20].decode("utf-8", "replace")
    assert sniff_path(target, head) == fmt


def test_an_event_file_renamed_is_still_known_by_its_first_record(tmp_path: Path) -> None:
    [source] = (FIXTURES / "tb_plain").glob("events.out.tfevents.*")
    renamed = tmp_path / "scalars.bin"
    shutil.copy(source, renamed)
    assert sniff_path(renamed, renamed.read_bytes()[:4096].decode("utf-8", "replace")) == "tensorboard"


def test_replay_of_a_run_directory_fires_at_the_injected_step() -> None:
    result = runner.invoke(app, ["replay", "--input", str(FIXTURES / "tb_megatron")])
    assert result.exit_code == 0, result.stderr
    fired = [(a["run_id"], a["rule"], a["step"]) for a in map(json.loads, result.stdout.splitlines())]
    assert ("tb_megatron", "nonfinite_grad", 70) in fired
    summary = result.stderr.splitlines()[-1]
    assert summary.startswith("replay: 19 events") and "values that are no training scalar" in summary


def test_replay_of_a_stdout_log_counts_the_lines_it_could_not_use(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    src = (FIXTURES / "log_hf_trainer" / "train.log").read_bytes()
    log.write_bytes(src + b"{'loss': 0.5, 'grad_norm': 0.\n")  # the last line cut by a kill
    result = runner.invoke(app, ["replay", "--input", str(log)])
    assert result.exit_code == 0, result.stderr
    fired = [(a["rule"], a["step"]) for a in map(json.loads, result.stdout.splitlines()) if a["state"] == "firing"]
    assert fired == [("loss_spike", 70)]
    err = result.stderr.splitlines()
    lines = src.count(b"\n") + 1
    assert err[0] == f"rankstream: skipped line {lines}: unreadable log dict (SyntaxError)"
    assert err[-1].endswith("1 malformed lines skipped, 26 lines without a log entry ignored"), err[-1]


def test_import_of_a_two_rank_log_writes_both_ranks(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    result = runner.invoke(
        app, ["import", "--input", str(FIXTURES / "log_torchrun" / "train.log"), "-o", str(out), "--run-id", "t"]
    )
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(e["run_id"], e["rank"], e["world_size"]) for e in events} == {("t", 0, 2), ("t", 1, 2)}
    assert result.stderr == "import: 64 events from log file, 0 entries skipped, 1 lines without a log entry ignored\n"


def test_a_log_with_nothing_importable_exits_1_with_one_line(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("[default0]:{'loss': 2.0, 'grad\nsome warning\n")
    for cmd in ("import", "replay"):
        result = runner.invoke(app, [cmd, "--input", str(log), "--format", "log"])
        assert result.exit_code == 1 and result.stdout == "", (cmd, result.stderr)
        assert result.stderr == (
            f"rankstream: error: nothing to import from {log} (log file): line 1: unreadable log dict (SyntaxError)\n"
        )
    log.write_text("loading model\nsome warning\n")
    result = runner.invoke(app, ["import", "--input", str(log), "--format", "log"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "no trainer log dict or Megatron iteration line in 2 lines" in result.stderr


def test_directories_without_event_files_or_read_as_another_format_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["replay", "--input", str(tmp_path)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "is a directory without TensorBoard event files" in result.stderr
    result = runner.invoke(app, ["import", "--input", str(FIXTURES / "tb_plain"), "--format", "swift"])
    assert result.exit_code == 2 and "only --format tensorboard reads one" in result.stderr


def test_without_tensorboard_the_import_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard.backend.event_processing.event_file_loader", None)
    result = runner.invoke(app, ["import", "--input", str(FIXTURES / "tb_plain")])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        "rankstream: error: reading TensorBoard event files needs the tensorboard package: pip install tensorboard\n"
    )


def test_a_file_forced_as_tensorboard_that_is_none_exits_1_with_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 8)
    result = runner.invoke(app, ["replay", "--input", str(junk), "--format", "tensorboard"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        f"rankstream: error: nothing to import from {junk} (tensorboard file): "
        "no scalar value in 1 event file(s) (or not an event file)\n"
    )


def test_timezone_places_megatron_stamps_and_an_unknown_zone_exits_2(tmp_path: Path) -> None:
    """Megatron-LM prints local time without a zone: --timezone says which; the same log read in two zones
    8 hours apart is stamped 8 hours apart."""
    log = str(FIXTURES / "log_megatron" / "train.log")

    def first_step_ts(zone: str) -> float:
        out = tmp_path / f"{zone.replace('/', '_')}.jsonl"
        result = runner.invoke(app, ["import", "--input", log, "-o", str(out), "--timezone", zone])
        assert result.exit_code == 0, result.stderr
        return next(e["ts"] for e in map(json.loads, out.read_text().splitlines()) if e["kind"] == "step")

    assert first_step_ts("UTC") - first_step_ts("Asia/Shanghai") == 8 * 3600
    for cmd in ("import", "replay"):
        bad = runner.invoke(app, [cmd, "--input", log, "--timezone", "Mars/Olympus"])
        assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "unknown --timezone 'Mars/Olympus'" in bad.stderr
