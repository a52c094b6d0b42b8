"""The ``rankstream`` command line.

Each module in this package that defines ``register(app)`` adds its commands;
heavy imports (Faust, chDB, torch) happen inside the commands, so ``--help``
stays fast. Exit codes: 0 success, 1 failure at run time, 2 bad usage or
configuration, 3 a required service (Kafka, store, Java) is unavailable: each
error family of ``rankstream.errors`` carries its code, mapped once in ``main``.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

from rankstream.cli.common import EXIT_FAILURE, error_line, fail
from rankstream.errors import RankstreamError

app = typer.Typer(
    name="rankstream",
    help="Real-time per-rank observability for distributed training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands() -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name == "common" or module.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{module.name}")
        register = getattr(mod, "register", None)
        if register is not None:
            register(app)


_register_commands()


def main() -> None:
    """Entry point: one clear line instead of a traceback for expected failures."""
    try:
        app()
    except RankstreamError as exc:
        fail(error_line(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_FAILURE)


if __name__ == "__main__":  # pragma: no cover
    main()
