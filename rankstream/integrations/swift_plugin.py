"""ms-swift plugin: per-rank live events from ``swift sft`` / ``swift rlhf`` with one more line::

    swift sft ... --external_plugins "$(python -m rankstream.integrations.swift_plugin)" --callbacks rankstream

``python -m rankstream.integrations.swift_plugin`` prints this file's path; ms-swift imports the file
(``--external_plugins``), which registers ``callbacks_map["rankstream"]``, and builds the callback for
``--callbacks rankstream`` as ``callbacks_map[name](args, trainer)``: :func:`rankstream_callback`.

Configuration comes from the environment, as everything else in rankstream: ``RANKSTREAM_*`` settings
(broker, topic prefix, ...), plus ``RANKSTREAM_RUN_ID`` (else the launcher's id or a generated one) and
``RANKSTREAM_META``, a JSON object merged into the run's meta (``{"team": "nlp", "project": "chat"}``).
From Python, ``register()`` does what loading the file does.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

CALLBACK_NAME = "rankstream"


def _env_meta() -> dict[str, Any]:
    raw = os.environ.get("RANKSTREAM_META", "").strip()
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        warnings.warn("rankstream: RANKSTREAM_META is not a JSON object; ignored", stacklevel=2)
        return {}
    return meta


def rankstream_callback(args: Any, trainer: Any) -> Any:
    """The callback ms-swift adds for ``--callbacks rankstream``, bound to its trainer."""
    from rankstream.producer.hf import RankstreamCallback

    run_id = os.environ.get("RANKSTREAM_RUN_ID", "").strip() or None
    return RankstreamCallback(run_id=run_id, meta=_env_meta(), trainer=trainer)


def register() -> None:
    """Make ``--callbacks rankstream`` known to ms-swift (idempotent)."""
    from swift.callbacks import callbacks_map

    callbacks_map[CALLBACK_NAME] = rankstream_callback


if __name__ == "__main__":
    print(Path(__file__).resolve())
else:  # loaded by ms-swift's --external_plugins (or imported where ms-swift is installed)
    try:
        register()
    except ImportError:  # no ms-swift here: register() is still there to call
        pass
