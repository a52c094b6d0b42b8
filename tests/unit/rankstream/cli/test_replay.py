"""`rankstream replay` / `rankstream import` end to end through the real command line (no broker)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from rankstream.cli import app
from rankstream.dev.synthetic import Fault, generate_run
from rankstream.schema import dumps
from rankstream.stream_jobs.core import RulesConfig

runner = CliRunner()


def _write(path: Path, events: list[dict], junk: dict[int, str] | None = None) -> Path:
    lines = [dumps(e).decode() for e in events]
    for index, text in sorted((junk or {}).items()):
        lines.insert(index, text)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_replay_writes_alerts_steps_and_a_summary(tmp_path: Path) -> None:
    events = generate_run("cli", 4, 200, faults=[Fault("nan_loss", 120, rank=2)])
    src = _write(tmp_path / "ev.jsonl", events, junk={3: "{not json", 10: '{"v": 1, "kind": "step"}'})
    steps_out = tmp_path / "steps.jsonl"
    result = runner.invoke(app, ["replay", "--input", str(src), "--steps-out", str(steps_out)])
    assert result.exit_code == 0, result.stderr
    alerts = [json.loads(line) for line in result.stdout.splitlines()]
    fired = [a for a in alerts if a["state"] == "firing"]
    assert [(a["rule"], a["ranks"], a["step"]) for a in fired] == [("nonfinite_loss", [2], 120)]
    # the loss is finite again from step 121: the alert resolves once quiet for its cooldown, under the same id
    [resolved] = [a for a in alerts if a["state"] == "resolved"]
    cooldown = RulesConfig().rules.nonfinite_loss.cooldown_steps
    assert resolved["alert_id"] == fired[0]["alert_id"] and resolved["resolved_step"] == 120 + cooldown
    steps = [json.loads(line) for line in steps_out.read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(200))
    err = result.stderr.splitlines()
    assert err[0].startswith("rankstream: skipped line 4: not valid JSON: unexpected character")
    assert err[1] == "rankstream: skipped line 11: missing or empty field 'run_id'"
    assert err[-1] == (
        f"replay: {len(events)} events (0 duplicates, 0 late), 200 steps (0 partial), "
        "1 alerts (nonfinite_loss=1), 2 malformed lines skipped"
    )


def test_malformed_lines_are_capped(tmp_path: Path) -> None:
    src = tmp_path / "junk.jsonl"
    src.write_text("garbage\n" * 30)
    result = runner.invoke(app, ["replay", "--input", str(src), "--format", "events"])
    assert result.exit_code == 0
    err = result.stderr.splitlines()
    assert len(err) == 22 and err[20] == "rankstream: ... and 10 more malformed lines"
    assert err[-1].endswith("30 malformed lines skipped")


def test_missing_input_and_bad_rules_exit_2_with_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["replay", "--input", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0
    assert "input file not found" in result.stderr
    src = _write(tmp_path / "ev.jsonl", generate_run("x", 1, 5))
    bad = tmp_path / "r.yaml"
    bad.write_text("rules: {loss_spike: {sigma: [}\n")
    result = runner.invoke(app, ["replay", "--input", str(src), "--rules", str(bad)])
    assert result.exit_code == 2 and "invalid YAML" in result.stderr and result.stderr.count("\n") == 1
    bad.write_text("rules: {loss_spike: {sigmaa: 3}}\n")
    result = runner.invoke(app, ["replay", "--input", str(src), "--rules", str(bad)])
    assert result.exit_code == 2 and "unknown key 'sigmaa'" in result.stderr
    result = runner.invoke(app, ["replay", "--input", str(src), "--rules", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "rules file not found" in result.stderr


def test_rules_file_changes_what_fires(tmp_path: Path) -> None:
    src = _write(tmp_path / "ev.jsonl", generate_run("r", 2, 200, faults=[Fault("nan_grad", 100)]))
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  nonfinite_grad: {enabled: false}\n")
    result = runner.invoke(app, ["replay", "--input", str(src), "--rules", str(rules)])
    assert result.exit_code == 0 and result.stdout == ""


def test_replay_autodetects_swift_and_hf(tmp_path: Path) -> None:
    swift = tmp_path / "logging.jsonl"
    swift.write_text(
        "\n".join(
            json.dumps({"loss": 2.0 - i * 0.01, "grad_norm": 1.0 if i != 5 else float("inf"), "learning_rate": 1e-4,
                        "global_step/max_steps": f"{i + 1}/10", "elapsed_time": f"{i * 3}s"})
            for i in range(10)
        )
    )  # fmt: skip
    result = runner.invoke(app, ["replay", "--input", str(swift)])
    assert result.exit_code == 0, result.stderr
    (alert,) = [a for a in map(json.loads, result.stdout.splitlines()) if a["state"] == "firing"]
    assert alert["rule"] == "nonfinite_grad" and alert["step"] == 6 and alert["run_id"] == "logging"
    hf = tmp_path / "trainer_state.json"
    hf.write_text(json.dumps({"log_history": [{"loss": float("nan"), "step": 1}, {"loss": 1.0, "step": 2}]}))
    result = runner.invoke(app, ["replay", "--input", str(hf)])
    assert result.exit_code == 0, result.stderr
    assert [(a["rule"], a["state"]) for a in map(json.loads, result.stdout.splitlines())][:1] == [
        ("nonfinite_loss", "firing")
    ]


def test_import_then_replay_through_the_installed_command(tmp_path: Path) -> None:
    hf = tmp_path / "trainer_state.json"
    hf.write_text(json.dumps({"log_history": [{"loss": 2.0, "grad_norm": float("nan"), "step": s} for s in (1, 2)]}))
    out = tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "rankstream.cli"]
    done = subprocess.run([*cmd, "import", "--input", str(hf), "--output", str(out), "--run-id", "imp"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "import: 4 events from hf file" in done.stderr
    done = subprocess.run([*cmd, "replay", "--input", str(out)], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    alerts = [json.loads(line) for line in done.stdout.splitlines()]
    fired = [(a["run_id"], a["rule"], a["step"]) for a in alerts if a["state"] == "firing"]
    assert fired == [("imp", "nonfinite_grad", 1)]


def test_empty_or_unimportable_files_exit_1_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "logging.jsonl"
    empty.write_text("\n  \n")
    for args in (["import", "--input", str(empty)], ["replay", "--input", str(empty)]):
        for fmt in ([], ["--format", "swift"], ["--format", "events"]):
            result = runner.invoke(app, [*args, *fmt])
            assert result.exit_code == 1, (args, fmt, result.stderr)
            assert result.stderr == f"rankstream: error: {empty} is empty: nothing to replay or import\n"
    final_only = tmp_path / "megatron.jsonl"
    final_only.write_text('{"last_model_checkpoint": "ckpt", "best_model_checkpoint": null, "best_metric": null}\n')
    bad_state = tmp_path / "trainer_state.json"
    bad_state.write_text('{\n  "global_step": 3,\n')
    for path, why in (
        (final_only, "no training or eval log entry"),
        (bad_state, "trainer_state.json is not valid JSON"),
    ):
        for cmd in ("import", "replay"):
            result = runner.invoke(app, [cmd, "--input", str(path)])
            assert result.exit_code == 1 and result.stdout == "", (cmd, path, result.stderr)
            assert result.stderr.count("\n") == 1 and f"nothing to import from {path}" in result.stderr
            assert why in result.stderr
