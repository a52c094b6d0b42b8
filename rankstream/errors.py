"""One root for every error rankstream raises on purpose, and the one-line message helper.

Each area has one family under :class:`RankstreamError`; the CLI maps a family
to an exit code in one place (``rankstream.cli.main``) through ``exit_code``:

* :class:`ConfigError` (2): a setting, flag, rules file or other input the user gave cannot work;
* :class:`ServiceUnavailable` (3): Kafka, the store, Java or another service cannot be reached;
* :class:`InvalidInput` (1): data that breaks the wire contract (events, records): goes to the DLQ;
* everything else (1): a failure at run time.

Families keep the built-in base they always had (``ValueError`` for bad
values, ``RuntimeError`` for failures), so ``except ValueError`` still works
where code relied on it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_SERVICE = 3

MAX_LINE = 300


class RankstreamError(Exception):
    """Root of rankstream's own errors; the message is one line meant for a person."""

    exit_code: int = EXIT_FAILURE


class ConfigError(RankstreamError, ValueError):
    """A configuration value that cannot work; the message names the variable, flag or key."""

    exit_code = EXIT_CONFIG


class ServiceUnavailable(RankstreamError, RuntimeError):
    """A service the command needs (Kafka, the store, Java) cannot be reached or started."""

    exit_code = EXIT_SERVICE


class InvalidInput(RankstreamError, ValueError):
    """Input data that breaks the wire contract; ``reason`` is one human line (what the DLQ records)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OperationFailed(RankstreamError, RuntimeError):
    """A run-time failure that is not a missing service (a spool that cannot be read, a demo check)."""


def one_line(exc: BaseException, limit: int = MAX_LINE) -> str:
    """The first line of ``exc``'s message, prefixed with its type when the message does not name it.

    Used wherever an exception becomes a log line, a DLQ reason or a CLI message.
    """
    name = type(exc).__name__
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if not first:
        return name[:limit]
    if isinstance(exc, RankstreamError) or first.startswith(name):
        return first[:limit]
    return f"{name}: {first}"[:limit]
