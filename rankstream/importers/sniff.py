"""Which importer reads a file, from the shape of its first JSON object (never a substring search:
ms-swift's last line repeats the whole ``log_history``, so a finished run's log contains that word)."""

from __future__ import annotations

import json

FORMATS = ("events", "swift", "hf")

#: Keys of ms-swift's final state line (``train_msg``), absent from a ``trainer_state.json``.
_SWIFT_FINAL_KEYS = frozenset({"last_model_checkpoint", "model_parameter_info", "memory"})


def is_blank(head: str) -> bool:
    """Nothing but whitespace (or a byte order mark): an empty file."""
    return not head.lstrip("\ufeff").strip()


def sniff_format(head: str) -> str:
    """``events``, ``swift`` or ``hf`` for a file starting with ``head`` (its first few KB).

    * first line a complete object with ``kind`` and ``run_id``: rankstream events;
    * first line a complete object holding ``log_history``: a one-line ``trainer_state.json`` (``hf``), or
      ms-swift's final state line alone (``swift``: it has ``last_model_checkpoint``...);
    * first line any other complete object: an ms-swift / Megatron-swift ``logging.jsonl``;
    * first line an incomplete object (``{`` of an indented document): ``trainer_state.json``;
    * anything else: events (replay reports the lines it cannot read).
    """
    text = head.lstrip("\ufeff").lstrip()
    first = text.split("\n", 1)[0].strip()
    try:
        obj = json.loads(first)
    except ValueError:
        return "hf" if first.startswith("{") else "events"
    if not isinstance(obj, dict):
        return "events"
    if "kind" in obj and "run_id" in obj:
        return "events"
    if isinstance(obj.get("log_history"), list) and not _SWIFT_FINAL_KEYS & obj.keys():
        return "hf"
    return "swift"
