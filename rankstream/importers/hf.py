"""Hugging Face ``trainer_state.json``: ``TrainerState.save_to_json`` (``transformers/trainer_callback.py``).

One JSON document (``json.dumps(asdict(state), indent=2, sort_keys=True)``)
whose ``log_history`` list holds every dict ``Trainer.log`` logged, each with
``step`` (``Trainer.log`` appends ``{**logs, "step": global_step}``); the last one
is the ``train()`` summary (``train_runtime``...). ms-swift's extra keys
(``memory(GiB)``...) are added to the callbacks' dict after that copy, so they
are not in here; they are in ``logging.jsonl``.
"""

from __future__ import annotations

import json
from typing import Any

from rankstream.importers.events import ImportResult
from rankstream.importers.log_lines import build_events


def import_hf_trainer_state(
    state: str | bytes | dict[str, Any],
    *,
    run_id: str,
    start_ts: float = 0.0,
    end_ts: float | None = None,
    run_name: str = "",
    team: str = "",
) -> ImportResult:
    """``log_history`` entries become ``step`` / ``eval`` events; the summary goes on ``run_end``."""
    if not isinstance(state, dict):
        try:
            state = json.loads(state)
        except ValueError as exc:
            return ImportResult(errors=[f"trainer_state.json is not valid JSON: {str(exc)[:80]}"], source="hf")
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        return ImportResult(errors=["trainer_state.json has no 'log_history' list"], source="hf")
    history: list[Any] = state["log_history"]
    entries = [(f"log_history[{i}]", entry) for i, entry in enumerate(history)]
    return build_events(
        entries,
        run_id=run_id,
        source="hf-trainer",
        start_ts=start_ts,
        end_ts=end_ts,
        run_name=run_name,
        team=team,
        require_step=True,
    )
