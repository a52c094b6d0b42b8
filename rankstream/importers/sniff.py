"""Which importer reads a file: TensorBoard event files by name or by their first record, JSON files from the
shape of their first object (never a substring search: ms-swift's last line repeats the whole ``log_history``,
so a finished run's log contains that word), captured stdout by the log lines in it."""

from __future__ import annotations

import json
from pathlib import Path

from rankstream.importers.megatron_log import parse_megatron_line
from rankstream.importers.printed_logs import looks_like_dict
from rankstream.importers.text_log import segments
from rankstream.importers.tfevents import EVENT_FILE_MARK, event_files

FORMATS = ("events", "swift", "hf", "tensorboard", "log")
#: The ``file_version`` an event file's first record holds (``brain.Event:2``).
_EVENT_FILE_VERSION = "brain.Event:"

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
    * an event file's first record (``brain.Event:2``): ``tensorboard``;
    * first line no JSON, and some line a trainer's printed log dict or a Megatron iteration line: ``log``;
    * first line an incomplete object (``{`` of an indented document): ``trainer_state.json``;
    * anything else: events (replay reports the lines it cannot read).
    """
    text = head.lstrip("\ufeff").lstrip()
    if _EVENT_FILE_VERSION in text[:256]:
        return "tensorboard"
    first = text.split("\n", 1)[0].strip()
    try:
        obj = json.loads(first)
    except ValueError:
        if is_training_log(text):
            return "log"
        return "hf" if first.startswith("{") else "events"
    if not isinstance(obj, dict):
        return "events"
    if "kind" in obj and "run_id" in obj:
        return "events"
    if isinstance(obj.get("log_history"), list) and not _SWIFT_FINAL_KEYS & obj.keys():
        return "hf"
    return "swift"


def is_training_log(text: str) -> bool:
    """Some line of ``text`` (after a torchrun rank prefix) is a printed log dict or a Megatron log line."""
    for _, _, piece in segments(text.splitlines()):
        if looks_like_dict(piece) or (("iteration" in piece) and parse_megatron_line(piece) is not None):
            return True
    return False


def sniff_path(path: Path, head: str) -> str:
    """:func:`sniff_format`, after what the path itself says: a directory or a file named
    ``events.out.tfevents.*`` is TensorBoard's (``ValueError`` for a directory without event files)."""
    if path.is_dir():
        if not event_files(path):
            raise ValueError(f"{path} is a directory without TensorBoard event files ({EVENT_FILE_MARK})")
        return "tensorboard"
    if EVENT_FILE_MARK in path.name:
        return "tensorboard"
    return sniff_format(head)
