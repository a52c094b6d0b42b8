"""What a caller of the embedded store's HTTP interface may run: read-only mode, host-reaching functions, team rows.

chDB has no users, grants or row policies, so the HTTP layer decides, on the
engine's own parse of the statement (``EXPLAIN AST``, never a regex, so comments,
case, backticks and escapes read as the engine reads them):

* read-only callers (team users, GET requests, ``readonly=1|2``) run only
  statements that read (SELECT, DESCRIBE, EXISTS, SHOW, EXPLAIN); their chDB
  handles also carry ``readonly=2``, so the engine refuses writes a second time;
* only the admin may call functions that reach the host (``file``, ``url``,
  ``s3``, ``remote``, ``executable``, ...);
* a team user reads only the ``rankstream`` tables (and a few harmless system
  tables), through ordinary table names, and the engine adds ``team = '<team>'``
  to every read of every team table (``additional_table_filters``: applied
  under joins, subqueries, ``IN table``, views and FINAL), a filter the query
  may not override.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rankstream.sinks.store.dsn import DATABASE
from rankstream.sinks.store.http_request import QueryError
from rankstream.sinks.store.tables import COLUMNS
from rankstream.sinks.store.users import Principal

READONLY = 164
ACCESS_DENIED = 497

#: Statement kinds (the root of ``EXPLAIN AST``) that only read.
READ_STATEMENTS = frozenset(
    {
        "SelectWithUnionQuery",
        "SelectIntersectExceptQuery",
        "SelectQuery",
        "DescribeQuery",
        "ExistsTableQuery",
        "ExistsDatabaseQuery",
        "ExistsViewQuery",
        "ExistsDictionaryQuery",
        "ShowTables",  # SHOW TABLES / DATABASES / SETTINGS
        "ShowColumns",
        "ShowCreateTableQuery",
        "ShowCreateDatabaseQuery",
        "ShowCreateViewQuery",
        "Explain",
    }
)
#: What a team user may run: reads of rows, not of other statements' metadata.
TEAM_STATEMENTS = frozenset(
    {
        "SelectWithUnionQuery",
        "SelectIntersectExceptQuery",
        "SelectQuery",
        "DescribeQuery",
        "ExistsTableQuery",
        "ShowTables",
        "ShowColumns",
        "Explain",
    }
)
#: Functions (table or scalar) that read or run something outside the store; the admin's only.
HOST_FUNCTIONS = frozenset(
    {
        "file",
        "filecluster",
        "url",
        "urlcluster",
        "s3",
        "s3cluster",
        "gcs",
        "oss",
        "cosn",
        "azureblobstorage",
        "azureblobstoragecluster",
        "hdfs",
        "hdfscluster",
        "remote",
        "remotesecure",
        "cluster",
        "clusterallreplicas",
        "mysql",
        "postgresql",
        "sqlite",
        "mongodb",
        "redis",
        "odbc",
        "jdbc",
        "executable",
        "executablepool",
        "input",
        "deltalake",
        "deltalakecluster",
        "iceberg",
        "icebergs3",
        "iceberglocal",
        "icebergcluster",
        "hudi",
        "hudicluster",
        "paimon",
        "ytsaurus",
        "arrowflight",
        "dictionary",
        "python",
    }
)
#: Table functions a team user may call: they generate rows and read none.
TEAM_TABLE_FUNCTIONS = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generate_series", "generateseries", "null"}
)
#: Scalar functions that read a table or dictionary by its name, around the row filter (team users).
_BY_NAME_FUNCTION_RE = re.compile(r"^(dict|joinget|hascolumnintable|getsubcolumn$)")
#: System tables a team user may read: the engine's catalog, no rows of any run.
TEAM_SYSTEM_TABLES = frozenset(
    {
        "one",
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "settings",
        "functions",
        "data_type_families",
        "formats",
        "table_functions",
        "time_zones",
        "build_options",
        "table_engines",
        "collations",
        "databases",
        "tables",
        "columns",
        "keywords",
    }
)
#: Settings that would lift the team filter if a team user could set them.
FILTER_SETTINGS = ("additional_table_filters", "additional_result_filter")

_LINE_RE = re.compile(r"^( *)(\S+)(?: (.*?))?(?: \(alias (?:.*)\))?(?: \(children \d+\))?$")


@dataclass
class Node:
    kind: str
    name: str
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)


def parse_ast(text: str) -> Node:
    """The tree of ``EXPLAIN AST`` output (one node a line, children indented by one space)."""
    root: Node | None = None
    stack: list[tuple[int, Node]] = []
    for line in text.splitlines():
        match = _LINE_RE.match(line.rstrip("\n"))
        if not match or not line.strip():
            continue
        depth = len(match.group(1))
        node = Node(match.group(2), (match.group(3) or "").strip())
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            node.parent = stack[-1][1]
            node.parent.children.append(node)
        elif root is None:
            root = node
        else:
            raise QueryError("Code: 62. DB::Exception: Multi-statements are not allowed. (SYNTAX_ERROR)", 62)
        stack.append((depth, node))
    if root is None:
        raise QueryError("Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)", 62)
    return root


def _walk(node: Node) -> Iterable[Node]:
    yield node
    for child in node.children:
        yield from _walk(child)


def team_filters(team: str) -> str:
    """The ``additional_table_filters`` value that limits every team table to ``team``'s rows."""
    literal = team.replace("\\", "\\\\").replace("'", "\\'")
    condition = f"team = '{literal}'".replace("\\", "\\\\").replace("'", "\\'")
    return "{" + ", ".join(f"'{DATABASE}.{table}': '{condition}'" for table in sorted(COLUMNS)) + "}"


def _denied(who: Principal, what: str) -> QueryError:
    return QueryError(
        f"Code: {ACCESS_DENIED}. DB::Exception: {who.name}: Not enough privileges: {what}. (ACCESS_DENIED)",
        ACCESS_DENIED,
    )


def readonly_error(who: Principal) -> QueryError:
    return QueryError(
        f"Code: {READONLY}. DB::Exception: {who.name}: Cannot execute query in readonly mode. (READONLY)", READONLY
    )


def check_settings(who: Principal, settings: Iterable[str]) -> None:
    """Settings a caller passes with the request (URL parameters)."""
    if who.admin:
        return
    for key in settings:
        if key.lower() in FILTER_SETTINGS:
            raise _denied(who, f"setting {key} is the row filter of team {who.team}")


@dataclass(frozen=True)
class Inspect:
    """How :func:`check` asks the engine: the normalized statement (refuses multi-statements) and its AST."""

    format_query: Callable[[str], str]
    explain_ast: Callable[[str], str]
    databases: Callable[[], set[str]]


def check(who: Principal, readonly: bool, sql: str, engine: Inspect) -> None:
    """Raise :class:`QueryError` (164 READONLY / 497 ACCESS_DENIED) unless ``who`` may run ``sql``."""
    if who.admin and not readonly:
        return
    normalized = engine.format_query(sql)  # parses one statement only, or raises the engine's syntax error
    root = parse_ast(engine.explain_ast(normalized))
    if readonly and root.kind not in READ_STATEMENTS:
        raise readonly_error(who)
    if who.admin:
        return
    if root.kind not in TEAM_STATEMENTS:
        raise _denied(who, f"{root.kind} is not a read of team rows")
    lowered = normalized.lower()
    for setting in FILTER_SETTINGS:
        if setting in lowered:
            raise _denied(who, f"setting {setting} is the row filter of team {who.team}")
    databases: set[str] | None = None
    for node in _walk(root):
        if node.kind == "Function":
            name = node.name.lower()
            table_function = node.parent is not None and node.parent.kind == "TableExpression"
            if name in HOST_FUNCTIONS or (table_function and name not in TEAM_TABLE_FUNCTIONS):
                raise _denied(who, f"table function {node.name}" if table_function else f"function {node.name}")
            if _BY_NAME_FUNCTION_RE.match(name):
                raise _denied(who, f"function {node.name} reads tables by name")
        elif node.kind == "TableIdentifier":
            _check_table(who, node.name)
        elif node.kind == "Identifier" and node.name.count(".") == 1:
            # ``x IN db.table``: a table under an expression; the filter covers the rankstream ones.
            databases = databases if databases is not None else engine.databases()
            db = node.name.partition(".")[0]
            if db in databases and db != DATABASE:
                _check_table(who, node.name)


def _check_table(who: Principal, name: str) -> None:
    if "." not in name:
        return  # the current database (forced to rankstream for team users) or a WITH alias
    db, _, table = name.partition(".")
    if db == DATABASE and "." not in table:
        return
    if db == "system" and table in TEAM_SYSTEM_TABLES:
        return
    raise _denied(who, f"SELECT on {name}")
