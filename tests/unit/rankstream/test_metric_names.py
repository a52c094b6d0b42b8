"""One mapping from trainer log keys to rankstream metric names (importers and live callbacks)."""

from __future__ import annotations

import math
import subprocess
import sys

from rankstream.metric_names import convert, map_metrics, sanitize, standard_name, to_number
from rankstream.schema import STANDARD_METRICS


def test_standard_names_across_trainers() -> None:
    assert standard_name("learning_rate") == "lr"
    assert standard_name("lm loss") == "loss"  # Megatron-swift 3.x
    assert standard_name("eval_lm loss") == "eval_loss"
    assert standard_name("memory(GiB)") == "mem_peak_mb"
    assert standard_name("train_speed(iter/s)") == "step_time_s"
    assert standard_name("train_speed(s/it)") == "step_time_s"
    assert standard_name("elapsed_time_per_iteration") == "step_time_s"
    for key in ("loss", "learning_rate", "grad_norm", "loss_scale", "memory(GiB)", "train_speed(s/it)"):
        assert standard_name(key) in STANDARD_METRICS


def test_other_names_are_sanitized_for_sql() -> None:
    assert standard_name("rewards/chosen") == "rewards_chosen"
    assert standard_name("rewards/AccuracyORM/mean") == "rewards_AccuracyORM_mean"
    assert standard_name("clip_ratio/low_mean") == "clip_ratio_low_mean"
    assert standard_name("kl") == "kl"
    assert sanitize("(%)") == "value"


def test_unit_conversions() -> None:
    assert convert("memory(GiB)", 17.35) == ("mem_peak_mb", 17.35 * 1024)
    name, value = convert("train_speed(iter/s)", 0.25) or ("", 0.0)
    assert name == "step_time_s" and value == 4.0
    assert convert("train_speed(iter/s)", 0.0) is None
    assert convert("train_speed(s/it)", 0.0) is None
    assert convert("train_speed(s/it)", "4.5") == ("step_time_s", 4.5)


def test_numbers_written_as_strings_and_bookkeeping() -> None:
    assert to_number("2.5") == 2.5 and math.isnan(to_number("NaN") or 0.0) and to_number("-inf") == -math.inf
    assert to_number("12.00%") is None and to_number(True) is None and to_number(None) is None
    assert convert("global_step/max_steps", "10/200") is None
    assert convert("iteration", "10/200") is None
    assert convert("elapsed_time", "1m 2s") is None


def test_eval_lines_carry_no_step_time() -> None:
    logs = {"eval_loss": 1.5, "train_speed(s/it)": 2.0, "memory(GiB)": 1.0, "iteration": "10/20"}
    assert map_metrics(logs, eval_line=True) == {"eval_loss": 1.5, "mem_peak_mb": 1024.0}
    assert map_metrics(logs)["step_time_s"] == 2.0


def test_the_producer_can_import_it_without_heavy_deps() -> None:
    code = (
        "import sys, rankstream.metric_names; "
        "heavy = {'torch', 'transformers', 'faust', 'clickhouse_connect', 'orjson', 'kafka'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
