"""How a reporter learns that its process is ending: SIGTERM/SIGINT handlers that chain, and exit reasons.

torchrun and SLURM stop workers with SIGTERM; the default action kills the
process before any ``atexit`` hook, losing ``run_end`` and the memory queue.
The handler installed here first lets the reporters close (``run_end`` with
``reason`` = the signal name, a bounded flush: Kafka first, the rest to the
spool), then hands the signal on exactly as it would have been handled without
us: to the Python handler installed before (torchrun's, Lightning's, Python's
own ``KeyboardInterrupt`` for SIGINT), or, where that was the default action,
by restoring it and raising the signal again so the process dies by it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("rankstream.producer")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)

NORMAL = "normal"  # run_end reason of a clean close / interpreter exit


class ChainedHandler:
    """Our handler for one signal: ``on_signal`` first, then whatever was installed before us."""

    def __init__(self, signum: int, previous: Any, on_signal: Callable[[int], None]) -> None:
        self.signum = signum
        self.previous = previous
        self.on_signal = on_signal

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        try:
            self.on_signal(signum)
        except Exception as exc:  # closing must never stop the signal from doing what it was sent for
            log.error("rankstream: closing on %s failed: %s", signal_name(signum), exc)
        self.chain(signum, frame)

    def chain(self, signum: int, frame: FrameType | None) -> None:
        previous = self.previous
        if previous is signal.SIG_IGN:
            return
        if callable(previous):
            previous(signum, frame)
            return
        # SIG_DFL, or None (a handler set outside Python): die by the signal, as without us.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def install(on_signal: Callable[[int], None]) -> list[int]:
    """Install a :class:`ChainedHandler` for SIGTERM and SIGINT where possible; the signals now handled.

    Only from the main thread (Python allows nothing else). A signal already
    handled by one of ours is left alone; an ignored signal (SIG_IGN, e.g.
    SIGINT of a background job) is not taken over: it would not end the process,
    so it must not end the reporter either. Never raises.
    """
    if threading.current_thread() is not threading.main_thread():
        return []
    installed: list[int] = []
    for signum in HANDLED_SIGNALS:
        try:
            current = signal.getsignal(signum)
            if isinstance(current, ChainedHandler) or current is signal.SIG_IGN:
                continue
            signal.signal(signum, ChainedHandler(signum, current, on_signal))
            installed.append(signum)
        except (ValueError, OSError, RuntimeError, TypeError) as exc:  # e.g. not the main interpreter
            log.debug("rankstream: cannot install a handler for %s: %s", signal_name(signum), exc)
    return installed


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def uncaught_exception_reason() -> str | None:
    """The type name of the exception the interpreter is exiting with, or None after a clean exit.

    The interpreter sets ``sys.last_value`` (3.12: also ``sys.last_exc``) when
    it prints an uncaught exception, before the ``atexit`` hooks run.
    """
    exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return type(exc).__name__ if exc is not None else None
