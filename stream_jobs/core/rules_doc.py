"""The parameter tables of docs/rules.md, generated from the dataclasses of ``params``.

Each table sits between a pair of marker comments in docs/rules.md; a unit test
fails when the file differs from what this module renders. After changing a
parameter, its default or its docstring, refresh the file with::

    python -m rankstream.stream_jobs.core.rules_doc --write docs/rules.md

Without ``--write`` the tables are printed. Meanings come from the string
literal under each field (attribute docstrings), read from the source with
``ast`` because Python does not keep them at run time.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
from dataclasses import fields
from functools import cache
from itertools import pairwise
from pathlib import Path

from rankstream.stream_jobs.core import params
from rankstream.stream_jobs.core.params import RULE_PARAMS, AlignmentParams, RuleParams

BEGIN = "<!-- BEGIN generated {name}: python -m rankstream.stream_jobs.core.rules_doc --write docs/rules.md -->"
END = "<!-- END generated {name} -->"


@cache
def _docstrings_by_class() -> dict[str, dict[str, str]]:
    """``{class name: {field: docstring}}`` for every dataclass in ``params``, as written in its body."""
    tree = ast.parse(inspect.getsource(params))
    out: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs: dict[str, str] = {}
        for stmt, following in pairwise(node.body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(following.value.value.split())
        out[node.name] = docs
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Each field's meaning; a field redeclared only to change its default keeps its base class's text."""
    by_class = _docstrings_by_class()
    out: dict[str, str] = {}
    for f in fields(cls):
        for klass in cls.__mro__:
            text = by_class.get(klass.__name__, {}).get(f.name)
            if text:
                out[f.name] = text
                break
        else:
            raise ValueError(f"{cls.__name__}.{f.name} has no docstring")
    return out


def format_default(value: object) -> str:
    """A default as a rules file would write it: ``30`` not ``30.0``, ``1e-7``, ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{value:g}")
    return str(value)


def _table(cls: type, first_column: str, order: list[str]) -> list[str]:
    docs = field_docs(cls)
    defaults = {f.name: f.default for f in fields(cls)}
    lines = [f"| {first_column} | default | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {format_default(defaults[name])} | {docs[name]} |" for name in order]
    return lines


def render_alignment() -> str:
    """The table of alignment settings."""
    return "\n".join(_table(AlignmentParams, "setting", [f.name for f in fields(AlignmentParams)]))


def render_rules() -> str:
    """One table per rule: its own thresholds first, then the settings every rule has."""
    common = [f.name for f in fields(RuleParams)]
    parts: list[str] = []
    for rule, cls in RULE_PARAMS.items():
        own = [f.name for f in fields(cls) if f.name not in common]
        parts.append(f"### `{rule}`\n\n" + "\n".join(_table(cls, "parameter", own + common)))
    return "\n\n".join(parts)


SECTIONS = {"alignment": render_alignment, "rule-parameters": render_rules}


def splice(text: str) -> str:
    """``text`` (docs/rules.md) with every generated section replaced by what the dataclasses say now."""
    for name, render in SECTIONS.items():
        begin = BEGIN.format(name=name)
        end = END.format(name=name)
        start = text.find(begin)
        stop = text.find(end)
        if start < 0 or stop < start:
            raise ValueError(f"docs/rules.md lacks the markers of the generated {name!r} section")
        text = f"{text[: start + len(begin)]}\n{render()}\n{text[stop:]}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", type=Path, metavar="RULES_MD", help="update the generated sections of this file")
    args = parser.parse_args(argv)
    if args.write is None:
        for name, render in SECTIONS.items():
            print(f"{BEGIN.format(name=name)}\n{render()}\n{END.format(name=name)}\n")
        return 0
    text = args.write.read_text(encoding="utf-8")
    args.write.write_text(splice(text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
