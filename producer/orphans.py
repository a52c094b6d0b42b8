"""Spools left behind by reporters that died, handed to a live reporter's sender one run at a time.

The sender delivers them in the background once its own backlog is gone; the
orphaned ranks of one run are locked together and delivered as one stream in
event-time order (:class:`~rankstream.producer.merge.SpoolMerge`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from rankstream.producer.merge import SpoolMerge, orphan_runs
from rankstream.producer.spool import Spool

log = logging.getLogger("rankstream.producer")


class OrphanSpools:
    """A lazy walk over the orphaned spools under ``root`` (except ``exclude``, the reporter's own), by run."""

    def __init__(self, root: Path, exclude: Path) -> None:
        self.root = root
        self.exclude = exclude
        self.done = False  # every orphan was delivered, or the walk failed: never look again
        self._walk: Iterator[list[Spool]] | None = None
        self._current: SpoolMerge | None = None

    def current(self) -> SpoolMerge | None:
        """The orphaned ranks of the run to deliver next (locked for us), or None when there is none left.

        Raises OSError when the spool root cannot be read.
        """
        if self._current is None:
            if self._walk is None:
                self._walk = orphan_runs(self.root, exclude=self.exclude)
            spools = next(self._walk, None)
            if spools is None:
                self.done = True
                return None
            self._current = SpoolMerge(spools)
            pending = self._current.pending
            if pending:
                log.info(
                    "rankstream: delivering %d events left in %s (%d rank(s), merged by time)",
                    pending,
                    spools[0].dir.parent,
                    len(spools),
                )
        return self._current

    def finish_current(self) -> None:
        """The current run has nothing left to deliver: unlock its spools and move on."""
        if self._current is not None:
            self._current.close()
            self._current = None

    def stop(self) -> None:
        """Give up on orphans for this reporter (the spool root cannot be read)."""
        self.done = True

    def close(self) -> None:
        self.finish_current()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's walk and locks without closing them."""
        self._current = None
        self._walk = None
