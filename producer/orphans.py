"""Spools left behind by reporters that died, handed to a live reporter's sender one at a time.

The sender delivers them in the background once its own backlog is gone; each
one is locked while it is being delivered (see :func:`~rankstream.producer.spool.orphan_spools`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from rankstream.producer.spool import Spool, orphan_spools

log = logging.getLogger("rankstream.producer")


class OrphanSpools:
    """A lazy walk over the orphaned spools under ``root`` (except ``exclude``, the reporter's own)."""

    def __init__(self, root: Path, exclude: Path) -> None:
        self.root = root
        self.exclude = exclude
        self.done = False  # every orphan was delivered, or the walk failed: never look again
        self._walk: Iterator[Spool] | None = None
        self._current: Spool | None = None

    def current(self) -> Spool | None:
        """The orphan to deliver next (locked for us), or None when there is none left.

        Raises OSError when the spool root cannot be read.
        """
        if self._current is None:
            if self._walk is None:
                self._walk = orphan_spools(self.root, exclude=self.exclude)
            self._current = next(self._walk, None)
            if self._current is None:
                self.done = True
                return None
            if self._current.pending:
                log.info("rankstream: delivering %d events left in %s", self._current.pending, self._current.dir)
        return self._current

    def finish_current(self) -> None:
        """The current orphan has nothing left to deliver: unlock it and move on."""
        if self._current is not None:
            self._current.close()
            self._current = None

    def stop(self) -> None:
        """Give up on orphans for this reporter (the spool root cannot be read)."""
        self.done = True

    def close(self) -> None:
        self.finish_current()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's walk and lock without closing them."""
        self._current = None
        self._walk = None
