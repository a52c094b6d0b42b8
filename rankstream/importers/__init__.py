"""Import past runs into v1 wire events (rank 0, world_size 1) so the detectors can judge them.

Formats, one module each: ms-swift / Megatron-swift ``logging.jsonl``
(:mod:`.swift`) and Hugging Face ``trainer_state.json`` (:mod:`.hf`); both are
read through the same trainer-log reading (:mod:`.log_lines`) and the same key
mapping (:mod:`rankstream.metric_names`) as the live callbacks use.
"""

from __future__ import annotations

from rankstream.importers.events import ImportResult, NothingToImport, require_logged
from rankstream.importers.hf import import_hf_trainer_state
from rankstream.importers.log_lines import parse_duration
from rankstream.importers.sniff import FORMATS, is_blank, sniff_format
from rankstream.importers.swift import import_swift_jsonl

__all__ = [
    "FORMATS",
    "ImportResult",
    "NothingToImport",
    "import_hf_trainer_state",
    "import_swift_jsonl",
    "is_blank",
    "parse_duration",
    "require_logged",
    "sniff_format",
]
