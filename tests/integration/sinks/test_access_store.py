"""The embedded store's HTTP interface refuses strangers, keeps read-only callers read-only, and shows a team
only its rows, against a client that tries to get around it (issue 14 items 1, 2)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from rankstream.sinks.store import users
from rankstream.sinks.store.migrations import migrate
from rankstream.sinks.store.tables import COLUMNS
from tests.integration.sinks.support import RANKSTREAM, free_port, http_client, start_store, wait_until

ADMIN_PASSWORD = os.environ[users.ENV_PASSWORD]  # support sets it for every store the tests serve


@dataclass
class Store:
    path: Path
    port: int
    admin: Any
    team_a: tuple[str, str]  # (user, password)
    team_b: tuple[str, str]

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


def _add_user(path: Path, team: str) -> tuple[str, str]:
    out = subprocess.run(
        [RANKSTREAM, "store", "user", "add", team, "--path", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    # "user a_ro (team a, read-only); password: XXX"
    name = out.stdout.split()[1]
    return name, out.stdout.strip().rsplit(" ", 1)[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    tmp = tmp_path_factory.mktemp("access")
    port = free_port()
    proc = start_store(tmp / "store", port, tmp / "store.log")
    admin = wait_until(lambda: http_client("127.0.0.1", port), "the store server", 60)
    try:
        migrate(admin)
        for table in COLUMNS:
            admin.command(f"INSERT INTO rankstream.{table} (team, run_id) VALUES ('a', 'run-a'), ('b', 'run-b')")
        # Users added while the server runs: it re-reads the users file.
        yield Store(tmp / "store", port, admin, _add_user(tmp / "store", "a"), _add_user(tmp / "store", "b"))
    finally:
        admin.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _client(store: Store, user: tuple[str, str], **kwargs: Any) -> Any:
    return clickhouse_connect.get_client(
        host="127.0.0.1", port=store.port, username=user[0], password=user[1], **kwargs
    )


def _refused(client: Any, sql: str, code: int) -> str:
    with pytest.raises(DatabaseError) as err:
        client.query(sql)
    assert f"Code: {code}." in str(err.value), (sql, str(err.value)[:300])
    return str(err.value)


def test_users_file_is_private(store: Store) -> None:
    path = users.users_file(store.path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ADMIN_PASSWORD in path.read_text() and store.team_a[1] not in path.read_text()


def test_no_or_wrong_credentials_are_refused(store: Store) -> None:
    with pytest.raises(DatabaseError, match="Code: 516"):
        clickhouse_connect.get_client(host="127.0.0.1", port=store.port)
    with pytest.raises(DatabaseError, match="Code: 516"):
        clickhouse_connect.get_client(host="127.0.0.1", port=store.port, password=ADMIN_PASSWORD[:-1])
    with pytest.raises(DatabaseError, match="Code: 516"):
        _client(store, (store.team_a[0], store.team_b[1]))
    for method in ("GET", "POST"):  # 401 in ClickHouse's error format, for any request but /ping
        args = ["-G", "--data-urlencode", "query=SELECT 1"] if method == "GET" else ["--data-binary", "SELECT 1"]
        out = subprocess.run(
            ["curl", "-s", "-w", "\n%{http_code}", *args, store.url()], capture_output=True, text=True, timeout=30
        )
        body, status = out.stdout.rsplit("\n", 1)
        assert status == "401" and body.startswith("Code: 516. DB::Exception: default: Authentication failed"), out
    ping = subprocess.run(["curl", "-s", store.url() + "ping"], capture_output=True, text=True, timeout=30)
    assert ping.stdout == "Ok.\n"


def _curl(store: Store, *args: str, stdin: str | None = None) -> tuple[str, str]:
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", *args], input=stdin, capture_output=True, text=True, timeout=30
    )
    body, status = out.stdout.rsplit("\n", 1)
    return body.rstrip("\n"), status


def test_curl_as_clickhouse_docs_use_it(store: Store) -> None:
    """The body is the query whatever curl's default content type says; credentials and format in headers."""
    url = f"http://default:{ADMIN_PASSWORD}@127.0.0.1:{store.port}/"
    assert _curl(store, url, "--data-binary", "@-", stdin="SELECT 1") == ("1", "200")
    assert _curl(store, f"{url}?query=SELECT%20", "--data-binary", "@-", stdin="2") == ("2", "200")  # param + body
    hdr = ["-H", "X-ClickHouse-User: default", "-H", f"X-ClickHouse-Key: {ADMIN_PASSWORD}"]
    fmt = ["-H", "X-ClickHouse-Format: JSONEachRow", "-H", "X-ClickHouse-Database: rankstream"]
    body, status = _curl(store, store.url(), *hdr, *fmt, "--data-binary", "SELECT count() AS n FROM runs")
    assert (body, status) == ('{"n":2}', "200")
    params = f"{store.url()}?user=default&password={ADMIN_PASSWORD}&default_format=CSV"
    assert _curl(store, params, "--data-binary", "SELECT 'x', 3") == ('"x",3', "200")


def test_get_and_readonly_refuse_writes_even_for_the_admin(store: Store) -> None:
    url = f"http://default:{ADMIN_PASSWORD}@127.0.0.1:{store.port}/"
    for sql in ("DROP TABLE rankstream.metrics", "CREATE TABLE rankstream.x (a Int8) ENGINE = Memory"):
        body, status = _curl(store, "-G", "--data-urlencode", f"query={sql}", url)
        assert status == "403" and body.startswith(
            "Code: 164. DB::Exception: default: Cannot execute query in readonly"
        ), body
        body, status = _curl(store, url + "?readonly=1", "--data-binary", sql)
        assert status == "403" and "Code: 164." in body
    body, status = _curl(
        store, url + "?readonly=1", "--data-binary", "INSERT INTO rankstream.runs (run_id) VALUES ('x')"
    )
    assert status == "403" and "Code: 164." in body
    reader = clickhouse_connect.get_client(
        host="127.0.0.1", port=store.port, password=ADMIN_PASSWORD, settings={"readonly": 1}
    )
    _refused(reader, "ALTER TABLE rankstream.runs DELETE WHERE 1", 164)
    assert store.admin.command("SELECT count() FROM rankstream.metrics") == 2  # nothing was dropped
    assert _curl(store, "-G", "--data-urlencode", "query=SELECT count() FROM rankstream.runs", url) == ("2", "200")


def test_admin_writes_and_reads_host_files(store: Store, tmp_path: Path) -> None:
    store.admin.command("CREATE TABLE IF NOT EXISTS default.scratch (a Int8) ENGINE = Memory")
    store.admin.command("DROP TABLE default.scratch")
    secret = tmp_path / "host.csv"
    secret.write_text("42\n")
    assert store.admin.command(f"SELECT * FROM file('{secret}', CSV, 'a Int32')") == 42


HOST_TRICKS = [
    "SELECT * FROM file('/etc/passwd')",
    "SELECT * FROM /* hi */ FiLe ( '/etc/passwd' , 'LineAsString')",
    "select * from `file`('/etc/passwd')",
    "SELECT * FROM `\\x66ile`('/etc/passwd')",
    "SELECT file('/etc/passwd')",
    "SELECT * FROM url('http://127.0.0.1:1/', CSV, 'a Int8')",
    "SELECT * FROM s3('http://127.0.0.1:1/b/k', CSV, 'a Int8')",
    "SELECT * FROM remote('127.0.0.1', rankstream.runs)",
    "SELECT * FROM executable('id', TSV, 'a String')",
    "SELECT * FROM rankstream.runs WHERE run_id IN (SELECT * FROM file('/etc/passwd'))",
    "WITH x AS (SELECT * FROM file('/etc/passwd')) SELECT * FROM x",
]


@pytest.mark.parametrize("sql", HOST_TRICKS)
def test_host_functions_are_the_admins_only(store: Store, sql: str) -> None:
    team = _client(store, store.team_a)
    _refused(team, sql, 497)


def _all_team_values(client: Any, sql: str) -> set[str]:
    return {str(v) for row in client.query(sql).result_rows for v in row}


def test_a_team_user_sees_only_its_rows(store: Store) -> None:
    team = _client(store, store.team_a)
    for table in COLUMNS:
        rows = team.query(f"SELECT team, run_id FROM rankstream.{table} FINAL").result_rows
        assert rows == [("a", "run-a")], table
        assert team.query(f"SELECT count() FROM {table}").result_rows == [(1,)]  # unqualified: rankstream
    other = _client(store, store.team_b)
    assert other.query("SELECT DISTINCT team FROM rankstream.metrics").result_rows == [("b",)]
    # server-side bind parameters (clickhouse-connect's default binding) work for team users, filtered too
    bound = "SELECT team, run_id FROM rankstream.runs FINAL WHERE run_id IN ({a:String}, {b:String})"
    assert team.query(bound, parameters={"a": "run-a", "b": "run-b"}).result_rows == [("a", "run-a")]
    refused = "SELECT * FROM file({path:String})"
    try:
        team.query(refused, parameters={"path": "/etc/passwd"})
    except Exception as exc:  # the check still sees the table function once the parameters are set
        assert "Code: 497" in str(exc), exc
    else:
        raise AssertionError("a team user read a host file through a bound parameter")


AROUND_THE_FILTER = [
    "SELECT r.team, m.run_id FROM rankstream.runs AS r JOIN rankstream.metrics AS m ON 1 = 1",
    "SELECT * FROM (SELECT team FROM rankstream.runs UNION ALL SELECT team FROM rankstream.alerts)",
    "SELECT team FROM rankstream.steps WHERE run_id IN (SELECT run_id FROM rankstream.runs)",
    "SELECT groupArray(team) FROM rankstream.events",
    "SELECT 'run-b' IN (SELECT run_id FROM rankstream.runs)",
    "SELECT run_id FROM rankstream.metrics FINAL WHERE team != 'a'",
    "SELECT run_id FROM rankstream.runs SETTINGS additional_table_filters = {'x': '1'}",
]


@pytest.mark.parametrize("sql", AROUND_THE_FILTER)
def test_joins_subqueries_and_unions_stay_filtered(store: Store, sql: str) -> None:
    team = _client(store, store.team_a)
    try:
        values = _all_team_values(team, sql)
    except DatabaseError as exc:
        assert "Code: 497." in str(exc), str(exc)[:300]
        return
    assert "b" not in values and "run-b" not in values and "['a', 'b']" not in values, values
    assert "1" not in values or "IN" not in sql


REFUSED_TO_TEAMS = [
    ("SELECT * FROM merge('rankstream', 'runs')", 497),
    ("SELECT * FROM view(SELECT * FROM rankstream.runs)", 497),
    ("SELECT * FROM loop(rankstream.runs) LIMIT 3", 497),
    ("SELECT * FROM system.parts", 497),
    ("SELECT * FROM system.query_log", 497),
    ("SELECT * FROM default.anything", 497),
    ("SELECT * FROM rankstream.runs SETTINGS additional_table_filters = {}", 497),
    ("SELECT * FROM rankstream.runs SETTINGS `\\x61dditional_table_filters` = {}", 497),
    ("SELECT * FROM (SELECT * FROM rankstream.runs SETTINGS additional_result_filter = '1')", 497),
    ("SELECT dictGet('d', 'a', 1)", 497),
    ("SELECT joinGet('rankstream.runs', 'team', 'run-b')", 497),
    ("DROP TABLE rankstream.runs", 164),
    ("drop/**/table rankstream.runs", 164),
    ("INSERT INTO rankstream.runs (team, run_id) SELECT 'a', 'forged'", 164),
    ("ALTER TABLE rankstream.runs DELETE WHERE team = 'b'", 164),
    ("CREATE TABLE rankstream.x (a Int8) ENGINE = Memory", 164),
    ("SYSTEM DROP MARK CACHE", 164),
    ("OPTIMIZE TABLE rankstream.runs FINAL", 164),
    ("SET additional_table_filters = {}", 164),
    ("SELECT 1; DROP TABLE rankstream.runs", 62),
]


@pytest.mark.parametrize(("sql", "code"), REFUSED_TO_TEAMS)
def test_a_team_user_cannot_get_around_the_filter(store: Store, sql: str, code: int) -> None:
    team = _client(store, store.team_a)
    _refused(team, sql, code)
    assert store.admin.command("SELECT count() FROM rankstream.runs") == 2


def test_request_settings_and_database_cannot_lift_the_filter(store: Store) -> None:
    with pytest.raises(DatabaseError, match="Code: 497"):
        _client(store, store.team_a, settings={"additional_table_filters": "{}"}).query("SELECT 1")
    elsewhere = _client(store, store.team_a, database="system")  # forced back to rankstream
    assert elsewhere.query("SELECT DISTINCT team FROM runs").result_rows == [("a",)]
    user, password = store.team_a
    hdr = ["-H", f"X-ClickHouse-User: {user}", "-H", f"X-ClickHouse-Key: {password}"]
    body, status = _curl(store, store.url(), *hdr, "-H", "X-ClickHouse-Database: default", "--data-binary",
                         "SELECT groupUniqArray(team) FROM runs")  # fmt: skip
    assert (body, status) == ("['a']", "200")


def test_removed_user_is_refused_at_once(store: Store) -> None:
    name, password = _add_user(store.path, "c")
    client = _client(store, (name, password))
    assert client.query("SELECT count() FROM rankstream.runs").result_rows == [(0,)]
    subprocess.run([RANKSTREAM, "store", "user", "remove", name, "--path", str(store.path)], check=True, timeout=60)
    _refused(client, "SELECT 1", 516)


def test_user_list_never_shows_passwords(store: Store) -> None:
    out = subprocess.run(
        [RANKSTREAM, "store", "user", "list", "--path", str(store.path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "default\tadmin" in out.stdout and "a_ro\tteam a (read-only)" in out.stdout
    assert store.team_a[1] not in out.stdout and ADMIN_PASSWORD not in out.stdout
    again = subprocess.run(
        [RANKSTREAM, "store", "serve", "--path", str(store.path), "--port", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 3  # the stand-in server owns the store (it writes no port file)
    why = f"rankstream: error: store {store.path} is in use by another process (a sink or another server owns it)"
    assert again.stderr.strip().splitlines()[-1] == why
