"""Import past runs into v1 wire events so the detectors can judge them.

Formats, one module each: ms-swift / Megatron-swift ``logging.jsonl``
(:mod:`.swift`), Hugging Face ``trainer_state.json`` (:mod:`.hf`), TensorBoard
event files (:mod:`.tfevents`, tags in :mod:`.tb_tags`) and a job's captured
stdout (:mod:`.text_log`: HF's printed dicts in :mod:`.printed_logs`,
Megatron-LM's lines in :mod:`.megatron_log`). All are read through the same
trainer-log reading (:mod:`.log_lines`) and the same key mapping
(:mod:`rankstream.metric_names`) as the live callbacks use.
"""

from __future__ import annotations

from rankstream.importers.events import ImportResult, NothingToImport, require_logged
from rankstream.importers.hf import import_hf_trainer_state
from rankstream.importers.log_lines import parse_duration
from rankstream.importers.sniff import FORMATS, is_blank, sniff_format, sniff_path
from rankstream.importers.swift import import_swift_jsonl
from rankstream.importers.text_log import import_training_log
from rankstream.importers.tfevents import TensorBoardMissing, import_tensorboard

__all__ = [
    "FORMATS",
    "ImportResult",
    "NothingToImport",
    "TensorBoardMissing",
    "import_hf_trainer_state",
    "import_swift_jsonl",
    "import_tensorboard",
    "import_training_log",
    "is_blank",
    "parse_duration",
    "require_logged",
    "sniff_format",
    "sniff_path",
]
