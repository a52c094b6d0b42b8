"""Captured training stdout (tests/fixtures/importers/log_*) into v1 events: HF dicts, Megatron-LM lines, ranks."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest

from rankstream.importers import ImportResult, NothingToImport, import_training_log, require_logged
from rankstream.importers.megatron_log import parse_megatron_line
from rankstream.importers.printed_logs import parse_bar, parse_printed_dict
from rankstream.schema import dumps, validate_event
from rankstream.stream_jobs.core import Engine
from tests.paths import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "importers"
END = 1_750_000_000.0

# the old Megatron-LM iteration line (no time stamp), as the issue quotes it
OLD_MEGATRON = (
    " iteration      100/  500000 | consumed samples:        51200 | elapsed time per iteration (ms): 1500.0 |"
    " learning rate: 1.500000E-04 | global batch size:   512 | lm loss: 6.543210E+00 | loss scale: 1.0 |"
    " grad norm: 1.234 | number of skipped iterations:   0 | number of nan iterations:   0 |"
)


def _import(name: str) -> ImportResult:
    with (FIXTURES / name / "train.log").open("rb") as fh:
        return import_training_log(fh, run_id="log", end_ts=END, tz=UTC)


def _valid(result: ImportResult) -> list[dict[str, Any]]:
    return [validate_event(json.loads(dumps(e))) for e in result.events]


def _fired(events: list[dict[str, Any]]) -> list[tuple[str, str, int, list[int]]]:
    engine = Engine()
    out = engine.process_many(events)
    out.extend(engine.finish())
    return [(a["rule"], a["severity"], a["step"], a["ranks"]) for a in out.alerts if a.get("state") != "resolved"]


def test_hf_trainer_stdout_steps_from_the_progress_bar_and_the_spike() -> None:
    result = _import("log_hf_trainer")
    assert result.errors == [] and result.source == "trainer-log"
    assert result.ignored > 20  # bars alone, the DeepSpeed warning
    events = _valid(result)
    assert [e["step"] for e in events if e["kind"] == "step"] == list(range(2, 81, 2))
    assert [e["step"] for e in events if e["kind"] == "eval"] == [20, 40, 60, 80]
    first = events[1]["metrics"]
    assert first == {"loss": 10.51, "grad_norm": 6.82, "lr": 0.05, "epoch": 0.5}  # '10.51' strings read as numbers
    end = events[-1]
    assert end["tags"]["status"] == "finished" and end["metrics"]["train_runtime"] == 1.229
    assert max(e["ts"] for e in events[:-1]) <= END
    assert _fired(events) == [("loss_spike", "critical", 70, [])]


def test_megatron_stdout_three_launches_nan_grad_norm_and_the_missing_nan_loss() -> None:
    result = _import("log_megatron")
    assert result.errors == [] and result.source == "megatron-lm"
    events = _valid(result)
    by_inc: dict[str, list[int]] = defaultdict(list)
    for e in events:
        if e["kind"] == "step":
            by_inc[e["inc"]].append(e["step"])
    # a resume that repeats iteration 50, and one that goes on from 80 after a process start line
    assert dict(by_inc) == {"launch-1": [10, 20, 30, 40, 50], "launch-2": [50, 60, 70, 80], "launch-3": [90, 100]}
    assert [e["inc"] for e in events if e["kind"] == "run_start"] == ["launch-1", "launch-2", "launch-3"]
    assert events[-1]["tags"]["status"] == "finished"  # "[after training is done]"
    assert [e["step"] for e in events if e["kind"] == "eval"] == [20, 40, 60, 80, 100]
    first = events[1]
    assert first["ts"] == datetime(2025, 6, 1, 10, 0, 12, 123456, tzinfo=UTC).timestamp()  # the line's stamp
    m = first["metrics"]
    assert m["loss"] == 7.925372 and m["lr"] == 1.5e-4 and m["grad_norm"] == 1.3 and m["step_time_s"] == 1.2
    assert m["batch_size"] == 32 and m["consumed_samples"] == 320 and m["nan_iterations"] == 0
    assert "loss_scale" not in m  # 1.0 throughout (bf16)
    step = {(e["inc"], e["step"]): e["metrics"] for e in events if e["kind"] == "step"}
    assert math.isnan(step[("launch-1", 30)]["grad_norm"])  # printed "nan"
    assert math.isnan(step[("launch-2", 70)]["loss"])  # printed no lm loss at all
    assert all(not math.isnan(v["loss"]) for k, v in step.items() if k != ("launch-2", 70))
    assert next(e for e in events if e["kind"] == "eval")["metrics"] == pytest.approx(
        {"eval_loss": 7.115719, "eval_lm_loss_ppl": 1231.169}
    )
    # the five minutes between the crash and the relaunch read as a stall at 50
    assert _fired(events) == [
        ("nonfinite_grad", "critical", 30, [0]),
        ("rank_hung", "critical", 50, [0]),
        ("nonfinite_loss", "critical", 70, [0]),
    ]
    engine = Engine()
    engine.process_many(events)
    assert (engine.stats["incarnations"], engine.stats["restarts"]) == (3, 1)  # only launch 2 repeats steps


def test_torchrun_prefixed_ranks_become_ranks_and_no_step_is_lost() -> None:
    result = _import("log_torchrun")
    assert result.errors == []
    events = _valid(result)
    assert {e["world_size"] for e in events} == {2}
    for rank in (0, 1):
        mine = [e for e in events if e["rank"] == rank]
        assert {e["tags"]["log_rank"] for e in mine} == {str(rank)}
        assert [e["seq"] for e in mine] == list(range(32))  # run_start, 30 steps, run_end
        assert [e["step"] for e in mine if e["kind"] == "step"] == list(range(1, 31))
    nan_step = [e for e in events if e["kind"] == "step" and e["step"] == 15]
    assert {e["rank"]: math.isnan(e["metrics"]["loss"]) for e in nan_step} == {0: False, 1: True}
    assert _fired(events) == [("nonfinite_loss", "critical", 15, [1]), ("nonfinite_grad", "critical", 15, [0, 1])]


def test_only_the_last_rank_logging_is_one_rank_that_keeps_its_number() -> None:
    lines = [
        "[default0]:> building GPT model ...",
        "[default3]:warning: something",
        f"[default7]:{OLD_MEGATRON}",
        f"[default7]:{OLD_MEGATRON.replace('100/', '110/')}",
    ]
    events = _valid(import_training_log(lines, run_id="m", end_ts=END))
    assert {(e["rank"], e["world_size"], e["tags"]["log_rank"]) for e in events} == {(0, 1, "7")}
    assert [e["step"] for e in events if e["kind"] == "step"] == [100, 110]
    assert events[-1]["tags"]["status"] == "unknown"  # no "[after training is done]"


def test_megatron_lines_without_time_stamps_are_timed_by_their_iteration_time() -> None:
    lines = [OLD_MEGATRON, OLD_MEGATRON.replace("100/", "110/")]
    events = _valid(import_training_log(lines, run_id="m", end_ts=END))
    steps = [e for e in events if e["kind"] == "step"]
    assert steps[1]["ts"] - steps[0]["ts"] == pytest.approx(10 * 1.5)  # 10 iterations of 1500 ms
    assert steps[1]["ts"] == END and steps[0]["metrics"]["step_time_s"] == 1.5


@pytest.mark.parametrize(
    ("line", "kind", "iteration", "values"),
    [
        (OLD_MEGATRON, "train", 100, {"loss": 6.54321, "grad_norm": 1.234}),
        (
            " validation loss at iteration 100 | lm loss value: NAN | lm loss PPL: 4.851652E+08 | ",
            "eval",
            100,
            {"eval_lm loss": math.nan},
        ),
        (
            " validation-wiki loss at iteration 20 on validation set | lm loss value: 2.5E+00 | ",
            "eval",
            20,
            {"eval_lm loss_wiki": 2.5},
        ),
    ],
)
def test_megatron_line_fields(line: str, kind: str, iteration: int, values: dict[str, float]) -> None:
    parsed = parse_megatron_line(line)
    assert parsed is not None and parsed.kind == kind and parsed.iteration == iteration and parsed.stamp is None
    for key, value in values.items():
        mapped = {"loss": "lm loss", "grad_norm": "grad norm"}.get(key, key)
        got = parsed.values[mapped]
        assert math.isnan(got) if math.isnan(value) else got == value


def test_megatron_test_set_and_other_lines_are_no_entries() -> None:
    assert parse_megatron_line(" validation loss at iteration 100 on test set | lm loss value: 2.0E+00 | ") is None
    assert parse_megatron_line("[after dataloaders are built] datetime: 2025-06-01 10:00:00.123456 ") is None


def test_printed_dicts_bare_nan_numpy_scalars_and_a_cut_line() -> None:
    assert parse_printed_dict("{'loss': nan, 'grad_norm': inf, 'x': -inf, 'learning_rate': 1e-05}") == {
        "loss": "nan",
        "grad_norm": "inf",
        "x": "-inf",
        "learning_rate": 1e-05,
    }
    assert parse_printed_dict("{'loss': np.float64(2.5), 'epoch': 0.1}") == {"loss": 2.5, "epoch": 0.1}
    with pytest.raises(ValueError, match="unreadable log dict"):
        parse_printed_dict("{'loss': 2.5, 'grad_norm': __import__('os')}")
    result = import_training_log(["{'loss': 2.1, 'epoch': 0.1}", "{'loss': 2.0, 'grad", "tqdm noise"], run_id="r")
    assert result.errors == ["line 2: unreadable log dict (SyntaxError)"] and result.ignored == 1
    assert [e["kind"] for e in result.events] == ["run_start", "step", "run_end"]


def test_bar_fields() -> None:
    bar = parse_bar(" 12%|█▎        | 10/80 [01:02<07:14,  6.21s/it]")
    assert bar is not None and (bar.desc, bar.n, bar.total, bar.elapsed) == ("", 10, 80, "01:02")
    assert parse_bar("Map: 100%|██████████| 1000/1000 [00:00<00:00, 5000.00 examples/s]").desc == "Map:"
    assert parse_bar("{'loss': 2.1}") is None


def test_a_log_without_any_log_line_names_what_it_looked_for() -> None:
    result = import_training_log(["Loading checkpoint shards: 100%", "Traceback (most recent call last):"], run_id="r")
    with pytest.raises(NothingToImport, match=r"no trainer log dict or Megatron iteration line in 2 lines"):
        require_logged(result, "train.log (log file)")


def test_rank_prefixes_not_from_zero_are_numbered_densely_and_keep_their_number() -> None:
    lines = []
    for step in (1, 2, 3):
        for printed in (0, 4):  # one printing rank per node: global ranks 0 and 4
            lines.append(f"[rank{printed}]:{{'loss': {1.0 + printed}, 'step': {step}}}")
    lines.append("[rank2]:NCCL INFO some chatter")
    events = _valid(import_training_log(lines, run_id="r", end_ts=END))
    seen = {(e["rank"], e["world_size"], e["tags"]["log_rank"]) for e in events}
    assert seen == {(0, 2, "0"), (1, 2, "4")}
    for rank, loss in ((0, 1.0), (1, 5.0)):
        mine = [e for e in events if e["rank"] == rank]
        assert [e["seq"] for e in mine] == list(range(5))
        assert [e["metrics"]["loss"] for e in mine if e["kind"] == "step"] == [loss] * 3


def test_binary_junk_is_counted_not_a_traceback() -> None:
    junk = [bytes(range(256)) * 4, b"{'lo\x00ss': \xff\xfe\n", b"\x1b[31mred\x1b[0m\r\r\n"]
    result = import_training_log(junk, run_id="j")
    assert result.events == [] and result.ignored == 2
    assert len(result.errors) == 1 and "unreadable log dict" in result.errors[0]


def _hf_step_lines(steps: range, first: int) -> list[str]:
    """What HF prints per logged step: the bar, the dict (tqdm.write), the bar redrawn; elapsed 2 s a step."""
    out = []
    for n in steps:
        bar = f" {n * 10}%|█| {n}/10 [00:{(n - first) * 2:02d}<00:10, 2.00s/it]"
        out.append(f"\r{bar}\r{{'loss': '{2.0 - n * 0.1:.2f}', 'learning_rate': '1e-05', 'epoch': '{n / 10}'}}\r{bar}")
    return out


def test_a_resumed_hf_run_appended_to_the_log_is_one_new_launch() -> None:
    lines = [*_hf_step_lines(range(1, 11), 0), "Resuming from checkpoint-6", *_hf_step_lines(range(7, 11), 6)]
    events = _valid(import_training_log(lines, run_id="x", end_ts=END))
    steps = [(e["inc"], e["step"]) for e in events if e["kind"] == "step"]
    assert steps == [("launch-1", n) for n in range(1, 11)] + [("launch-2", n) for n in range(7, 11)]
    assert events[-2]["ts"] == END and events[1]["ts"] == END - 26  # 20 s + 8 s: the second launch's clock continues
    engine = Engine()
    engine.process_many(events)
    assert (engine.stats["incarnations"], engine.stats["restarts"]) == (2, 1)
