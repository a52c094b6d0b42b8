"""ms-swift logging.jsonl and HF trainer_state.json into v1 events, then through the detectors."""

from __future__ import annotations

import json

import pytest

from rankstream.importers import (
    NothingToImport,
    import_hf_trainer_state,
    import_swift_jsonl,
    parse_duration,
    require_logged,
    sniff_format,
)
from rankstream.schema import dumps, validate_event
from rankstream.stream_jobs.core import Engine

SWIFT = [
    '{"loss": 2.1, "grad_norm": 1.9, "learning_rate": 9.9e-05, "memory(GiB)": 17.35, "train_speed(iter/s)": 0.21, '
    '"epoch": 0.01, "global_step/max_steps": "1/500", "elapsed_time": "4s", "remaining_time": "35m 7s"}',
    '{"loss": 2.0, "grad_norm": NaN, "learning_rate": 9.8e-05, "memory(GiB)": 17.4, "train_speed(s/it)": 4.5, '
    '"epoch": 0.02, "global_step/max_steps": "2/500", "elapsed_time": "1m 5s"}',
    "this is not json",
    '{"eval_loss": 1.8, "eval_acc": 0.5, "global_step/max_steps": "2/500", "elapsed_time": "1m 9s"}',
    "",
]


def test_swift_lines_become_valid_events() -> None:
    result = import_swift_jsonl(SWIFT, run_id="sw", start_ts=1000.0)
    assert result.errors == ["line 3: not valid JSON: Expecting value: line 1 column 1 (char 0)"]
    events = [validate_event(json.loads(dumps(e))) for e in result.events]
    assert [e["kind"] for e in events] == ["run_start", "step", "step", "eval", "run_end"]
    assert [e["seq"] for e in events] == [0, 1, 2, 3, 4]
    first = events[1]
    assert first["step"] == 1 and first["ts"] == 1004.0 and first["rank"] == 0 and first["world_size"] == 1
    assert first["metrics"]["lr"] == 9.9e-05 and first["metrics"]["mem_peak_mb"] == 17.35 * 1024
    assert abs(first["metrics"]["step_time_s"] - 1 / 0.21) < 1e-9
    assert events[2]["metrics"]["step_time_s"] == 4.5 and events[2]["ts"] == 1065.0
    assert events[2]["metrics"]["grad_norm"] != events[2]["metrics"]["grad_norm"]  # NaN survives as NaN
    assert events[3]["metrics"]["eval_loss"] == 1.8


def test_swift_run_through_engine_flags_the_nan_grad() -> None:
    events = [validate_event(e) for e in import_swift_jsonl(SWIFT, run_id="sw").events]
    engine = Engine()
    out = engine.process_many(events)
    out.extend(engine.finish())
    assert [(s["step"], s.get("phase")) for s in out.steps] == [(1, None), (2, None), (2, "eval")]
    assert out.steps[-1]["metrics"]["eval_loss"]["mean"] == 1.8  # the eval line's aggregate, after its step
    assert [(a["rule"], a["severity"]) for a in out.alerts] == [("nonfinite_grad", "critical")]


def test_hf_trainer_state_log_history() -> None:
    state = {
        "global_step": 20,
        "log_history": [
            {"epoch": 0.5, "grad_norm": 1.5, "learning_rate": 1e-4, "loss": 2.5, "step": 10},
            {"epoch": 1.0, "eval_loss": 2.2, "eval_runtime": 3.0, "step": 10},
            {"epoch": 1.0, "grad_norm": 1.2, "learning_rate": 5e-5, "loss": 2.1, "step": 20},
            {"epoch": 1.0, "step": 20, "total_flos": 1.0, "train_loss": 2.3, "train_runtime": 40.0},
            {"loss": 1.0},
        ],
    }
    result = import_hf_trainer_state(json.dumps(state), run_id="hf", start_ts=0.0)
    assert result.errors == ["log_history[4]: missing or invalid 'step'"]
    kinds = [(e["kind"], e["step"], e["ts"]) for e in result.events]
    assert kinds == [
        ("run_start", 0, 0.0),
        ("step", 10, 20.0),
        ("eval", 10, 20.0),
        ("step", 20, 40.0),
        ("run_end", 20, 41.0),
    ]
    assert result.events[1]["metrics"] == {"epoch": 0.5, "grad_norm": 1.5, "lr": 1e-4, "loss": 2.5}
    for ev in result.events:
        validate_event(ev)


def test_hf_bad_inputs_are_one_line_errors() -> None:
    assert import_hf_trainer_state("{", run_id="x").errors[0].startswith("trainer_state.json is not valid JSON")
    assert import_hf_trainer_state("{}", run_id="x").errors == ["trainer_state.json has no 'log_history' list"]


def test_durations_and_format_sniffing() -> None:
    assert parse_duration("4s") == 4.0
    assert parse_duration("35m 7s") == 2107.0
    assert parse_duration("1h 2m 3s") == 3723.0
    assert parse_duration("1:02:03") == 3723.0
    assert parse_duration("soon") is None
    assert sniff_format('{"log_history": []}') == "hf"
    assert sniff_format(SWIFT[0]) == "swift"
    assert sniff_format('{"v":1,"kind":"step","run_id":"r"}\n') == "events"


def test_a_finished_swift_log_is_not_taken_for_a_trainer_state() -> None:
    final = json.dumps({"last_model_checkpoint": "ckpt-2", "global_step": 2, "log_history": [], "memory": 17.4})
    head = "\n".join([SWIFT[0], SWIFT[1], final])
    assert '"log_history"' in head and sniff_format(head) == "swift"
    result = import_swift_jsonl([SWIFT[0], SWIFT[1], final], run_id="sw")
    assert [(e["kind"], e["step"]) for e in result.events][1:] == [("step", 1), ("step", 2), ("run_end", 2)]
    assert sniff_format('{\n  "global_step": 2,\n  "log_history": [\n') == "hf"  # indented trainer_state.json
    assert sniff_format("\ufeff" + SWIFT[0]) == "swift"


def test_numbers_written_as_strings_and_string_iterations() -> None:
    lines = [
        '{"loss": "2.5", "grad_norm": "nan", "learning_rate": "1e-4", "iteration": "10/20", "elapsed_time": "10s"}',
        '{"loss": 2.4, "iteration": "20/20", "elapsed_time": "20s", "train_speed(s/it)": "1.0"}',
    ]
    events = [validate_event(e) for e in import_swift_jsonl(lines, run_id="s").events]
    first, second = events[1], events[2]
    assert first["step"] == 10 and first["metrics"]["loss"] == 2.5 and first["metrics"]["lr"] == 1e-4
    assert first["metrics"]["grad_norm"] != first["metrics"]["grad_norm"]
    assert second["step"] == 20 and second["metrics"]["step_time_s"] == 1.0


def test_a_relaunch_appended_to_the_same_log_keeps_the_clock_running() -> None:
    lines = [
        json.dumps({"loss": 2.0, "global_step/max_steps": f"{s}/8", "elapsed_time": f"{e}s"})
        for s, e in ((1, 10), (2, 20), (3, 5), (4, 15))  # the second launch's clock starts again at 0
    ]
    events = import_swift_jsonl(lines, run_id="s", end_ts=1000.0).events
    ts = [e["ts"] for e in events if e["kind"] == "step"]
    assert ts == sorted(ts) and ts[-1] == 1000.0 and ts[2] - ts[1] == 5.0


def test_eval_line_without_a_step_belongs_to_the_last_training_step() -> None:
    lines = ['{"lm loss": 2.0, "global_step/max_steps": "7/9", "elapsed_time": "3s"}', '{"eval_lm loss": 1.9}']
    events = import_swift_jsonl(lines, run_id="m").events
    assert [(e["kind"], e["step"], e["ts"]) for e in events[1:3]] == [("step", 7, 3.0), ("eval", 7, 3.0)]
    assert events[2]["metrics"] == {"eval_loss": 1.9}


def test_nothing_importable_is_one_error() -> None:
    megatron_final = '{"last_model_checkpoint": "c", "best_model_checkpoint": null, "best_metric": null}'
    for result in (
        import_swift_jsonl([megatron_final], run_id="x"),
        import_swift_jsonl(["{not json", "[1, 2]"], run_id="x"),
        import_hf_trainer_state("{", run_id="x"),
    ):
        with pytest.raises(NothingToImport) as info:
            require_logged(result, "f.jsonl")
        assert str(info.value).startswith("nothing to import from f.jsonl: ") and "\n" not in str(info.value)
        assert info.value.exit_code == 1


def test_a_relaunch_appended_to_the_same_log_is_a_new_incarnation() -> None:
    """A resumed launch repeats steps from its checkpoint: its own inc and seq, so nothing is deduplicated away."""
    lines = [
        json.dumps({"loss": 3.0 - s / 10, "global_step/max_steps": f"{s}/8", "elapsed_time": f"{e}s"})
        for s, e in ((1, 10), (2, 20), (3, 30), (2, 5), (3, 15), (4, 25))  # resumed from the step-1 checkpoint
    ]
    events = [validate_event(e) for e in import_swift_jsonl(lines, run_id="s", end_ts=1000.0).events]
    starts = [e for e in events if e["kind"] == "run_start"]
    assert [s["inc"] for s in starts] == ["launch-1", "launch-2"]
    by_inc: dict[str, list[tuple[int, int]]] = {}
    for e in events:
        if e["kind"] == "step":
            by_inc.setdefault(e["inc"], []).append((e["seq"], e["step"]))
    assert by_inc == {"launch-1": [(1, 1), (2, 2), (3, 3)], "launch-2": [(1, 2), (2, 3), (3, 4)]}
    keys = {(e["rank"], e["inc"], e["seq"]) for e in events}
    assert len(keys) == len(events)  # the store's dedup key keeps every event
    engine = Engine()
    out = engine.process_many(events)
    out.extend(engine.finish())
    steps = [(s["step"], s.get("restart", 0), s["metrics"]["loss"]["mean"]) for s in out.steps]
    # both attempts of steps 2 and 3 are aligned and kept (the resumed one as restart 1), none dropped as late
    assert steps == [(1, 0, 2.9), (2, 0, 2.8), (3, 0, 2.7), (2, 1, 2.8), (3, 1, 2.7), (4, 1, 2.6)]
    assert engine.stats["late_events"] == 0 and engine.stats["restarts"] == 1
