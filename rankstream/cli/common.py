"""Shared CLI pieces: exit codes, settings from env + flags, one-line errors."""

from __future__ import annotations

import sys
from typing import Annotated, Any, NoReturn

import typer

from rankstream.config import Settings
from rankstream.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_SERVICE, ConfigError, RankstreamError, one_line

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "EXIT_SERVICE", "error_line", "fail", "load_settings"]

BootstrapOpt = Annotated[
    str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers [env RANKSTREAM_BOOTSTRAP_SERVERS]")
]
PrefixOpt = Annotated[str | None, typer.Option("--prefix", help="Topic prefix [env RANKSTREAM_TOPIC_PREFIX]")]
StateDirOpt = Annotated[
    str | None, typer.Option("--state-dir", help="State directory [env RANKSTREAM_STATE_DIR, default ./.rankstream]")
]
DsnOpt = Annotated[
    str | None,
    typer.Option(
        "--dsn", help="Store DSN: chdb:///abs/path or http(s)://user:pass@host:port/db [env RANKSTREAM_STORE_DSN]"
    ),
]


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print one line to stderr and exit with ``code``."""
    print(f"rankstream: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def error_line(exc: RankstreamError) -> str:
    """The one line the CLI prints for one of rankstream's own errors."""
    text = one_line(exc)
    return f"configuration error: {text}" if isinstance(exc, ConfigError) else text


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment with flag overrides; a bad value exits with code 2."""
    try:
        return Settings.from_env(**overrides)
    except ConfigError as exc:
        fail(error_line(exc), EXIT_CONFIG)
