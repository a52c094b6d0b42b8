"""docs/rules.md agrees with the parameter dataclasses (generated tables and the defaults quoted in prose)."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from rankstream.stream_jobs.core.params import RULE_PARAMS, AlignmentParams, LossSpikeParams, RuleParams
from rankstream.stream_jobs.core.rules_doc import field_docs, format_default, render_rules, splice
from tests.paths import REPO_ROOT

RULES_MD = REPO_ROOT / "docs" / "rules.md"
REFRESH = "python -m rankstream.stream_jobs.core.rules_doc --write docs/rules.md"


def test_generated_tables_in_rules_md_are_current() -> None:
    text = RULES_MD.read_text(encoding="utf-8")
    assert splice(text) == text, f"docs/rules.md is out of date with stream_jobs/core/params.py: run {REFRESH}"


def test_a_changed_default_makes_the_doc_stale() -> None:
    text = RULES_MD.read_text(encoding="utf-8")
    row = "| `sigma` | 6 | "
    assert text.count(row) == 1
    assert splice(text.replace(row, "| `sigma` | 7 | ")) == text


def test_every_field_has_a_meaning() -> None:
    for cls in (AlignmentParams, *RULE_PARAMS.values()):
        docs = field_docs(cls)
        assert set(docs) == {f.name for f in fields(cls)}
        assert all(len(text) > 10 for text in docs.values()), cls.__name__
    # A field redeclared only to change its default keeps the base class's meaning.
    assert field_docs(LossSpikeParams)["during_warmup"] == field_docs(RuleParams)["during_warmup"]
    assert "### `memory_pressure`" in render_rules()


@pytest.mark.parametrize(
    ("value", "text"),
    [(30.0, "30"), (0.005, "0.005"), (1e-7, "1e-7"), (1e-12, "1e-12"), (128, "128"), (True, "true"), ("info", "info")],
)
def test_format_default(value: object, text: str) -> None:
    assert format_default(value) == text


# `name`=VALUE in the prose table, VALUE possibly followed by a unit: 5% is 0.05, 5 ms is 0.005.
_QUOTED = re.compile(r"`(\w+)`=([0-9][0-9.e+-]*)(%| ms)?")


def _rules_table_rows(text: str) -> dict[str, list[str]]:
    section = text[text.index("\n## Rules\n") : text.index("\n## Rule parameters\n")]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+)` \|", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in line.strip("|").split(" | ")]
    return rows


def test_defaults_quoted_in_the_rules_table_agree() -> None:
    rows = _rules_table_rows(RULES_MD.read_text(encoding="utf-8"))
    assert set(rows) == set(RULE_PARAMS)
    checked = 0
    for rule, (_, fires_when, severity, warmup, _) in rows.items():
        params = RULE_PARAMS[rule]()
        assert warmup == params.during_warmup, rule
        assert severity == "see left" or severity.split(" / ")[0] == params.severity, rule
        for name, number, unit in _QUOTED.findall(fires_when):
            value = float(number) / {"%": 100, " ms": 1000}.get(unit, 1)
            assert getattr(params, name) == pytest.approx(value), f"{rule}.{name}: doc says {number}{unit}"
            checked += 1
    assert checked >= 30
