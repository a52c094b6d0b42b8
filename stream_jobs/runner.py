"""The Faust worker process that runs a :class:`~rankstream.stream_jobs.app.StreamJob`.

Two things differ from ``faust.Worker``:

* no terminal spinner: it sets the root logger to DEBUG (every aiokafka debug
  record is then built and dropped: ~3% of the worker's time) and writes escape
  codes into log files;
* the worker's own progress lines (stats every 10 s, partition assignments) are
  logged at INFO and still shown at the default ``--loglevel warning``, which
  keeps Faust's and aiokafka's INFO chatter out. A level above WARNING hides
  them, as it hides every warning.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

#: The logger of the worker's own lines (stats, assignments, publishing retries).
WORKER_LOGGER = "rankstream.worker"


def own_log_level(level: int) -> int:
    """The level of :data:`WORKER_LOGGER` when Faust logs at ``level``: INFO at the default WARNING."""
    return min(level, logging.INFO) if level <= logging.WARNING else level


class _LevelOrOwnLines(logging.Filter):
    """Lets through records at ``level`` or above, and the worker's own lines at any level the logger allows."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or record.name.startswith(WORKER_LOGGER)


class StreamWorkerRunner(faust.Worker):
    """``faust.Worker`` without the spinner, showing the worker's INFO lines at the default level."""

    def __init__(self, app: faust.App, *, loglevel: str = "warning", **kwargs: Any) -> None:
        super().__init__(app, loglevel=loglevel.upper(), quiet=True, redirect_stdouts=False, **kwargs)
        self.spinner = None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        own = own_log_level(level)
        logging.getLogger(WORKER_LOGGER).setLevel(own)
        if own < level:  # the handlers let the worker's lines through, every other logger keeps ``level``
            for handler in logger.handlers:
                handler.setLevel(own)
                handler.addFilter(_LevelOrOwnLines(level))


__all__ = ["WORKER_LOGGER", "StreamWorkerRunner", "own_log_level"]
