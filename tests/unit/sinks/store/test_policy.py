"""The access policy on canned ``EXPLAIN AST`` output (the engine's parse; tests/integration runs it for real)."""

from __future__ import annotations

import pytest

from rankstream.sinks.store.http_request import QueryError
from rankstream.sinks.store.policy import Inspect, check, parse_ast, team_filters
from rankstream.sinks.store.tables import COLUMNS
from rankstream.sinks.store.users import Principal

ADMIN = Principal("default")
TEAM = Principal("a_ro", "a")

JOIN_FILE = """SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 3)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 2)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      Function FiLe (alias f) (children 1)
       ExpressionList (children 1)
        Literal \\'/etc/passwd\\'
    TablesInSelectQueryElement (children 2)
     TableExpression (children 1)
      TableIdentifier rankstream.runs
"""


def _engine(ast: str, formatted: str = "SELECT 1") -> Inspect:
    return Inspect(lambda _sql: formatted, lambda _sql: ast, lambda: {"rankstream", "system", "default"})


def _table(name: str) -> str:
    return f"""SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      TableIdentifier {name}
"""


def test_parse_ast_builds_the_tree() -> None:
    root = parse_ast(JOIN_FILE)
    assert root.kind == "SelectWithUnionQuery"
    function = root.children[0].children[0].children[1].children[0].children[0].children[0]
    assert function.kind == "Function" and function.name == "FiLe" and function.parent is not None
    assert function.parent.kind == "TableExpression"


def test_two_roots_are_two_statements() -> None:
    with pytest.raises(QueryError, match="Multi-statements"):
        parse_ast("SelectWithUnionQuery\nDropQuery")


def test_admin_writes_unchecked_and_reads_host_files() -> None:
    check(ADMIN, False, "DROP TABLE x", _engine("DropQuery x y"))
    check(ADMIN, True, "SELECT * FROM file('x')", _engine(JOIN_FILE))


@pytest.mark.parametrize("root", ["DropQuery rankstream t", "InsertQuery", "SYSTEM query", "AlterQuery", "Set"])
def test_readonly_refuses_writes(root: str) -> None:
    for who in (ADMIN, TEAM):
        with pytest.raises(QueryError) as err:
            check(who, True, "x", _engine(root))
        assert err.value.code == 164


def test_team_user_host_function_and_tables() -> None:
    with pytest.raises(QueryError, match="table function FiLe") as err:
        check(TEAM, True, "x", _engine(JOIN_FILE))
    assert err.value.code == 497
    check(TEAM, True, "x", _engine(_table("rankstream.metrics")))
    check(TEAM, True, "x", _engine(_table("metrics")))
    check(TEAM, True, "x", _engine(_table("system.settings")))
    for name in ("system.parts", "default.t", "rankstream_x.t", "rankstream.a.b"):
        with pytest.raises(QueryError, match="Not enough privileges"):
            check(TEAM, True, "x", _engine(_table(name)))


def test_team_user_may_not_touch_the_row_filter() -> None:
    formatted = "SELECT 1 SETTINGS additional_table_filters = {}"
    with pytest.raises(QueryError, match="row filter"):
        check(TEAM, True, "x", _engine(_table("rankstream.runs"), formatted))


def test_team_filters_cover_every_table() -> None:
    text = team_filters("vision")
    for table in COLUMNS:
        assert f"'rankstream.{table}': 'team = \\'vision\\''" in text
