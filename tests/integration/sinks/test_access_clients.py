"""Real clients against ``rankstream store serve``: the unmodified ClickHouse JDBC driver, clickhouse-connect and
the CLI, which finds the admin password itself (issue 14 items 1, 2)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from rankstream.sinks.store import portfile, users
from rankstream.sinks.store.migrations import migrate
from rankstream.sinks.store.tables import COLUMNS
from tests.integration.sinks.support import RANKSTREAM, free_port, wait_until
from tests.paths import REPO_ROOT

JDBC_DIR = Path(__file__).parent / "jdbc"
JDBC_LIB = REPO_ROOT / ".rankstream" / "jdbc-lib"


def _file_password(store: Path) -> str:
    """The generated admin password (this test process has RANKSTREAM_STORE_PASSWORD set for other stores)."""
    return str(json.loads(users.users_file(store).read_text())["admin"]["password"])


def _env_without_password() -> dict[str, str]:
    env = {**os.environ}
    env.pop(users.ENV_PASSWORD, None)  # the CLI must find the generated password next to the store
    return env


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, Any]]:
    """``rankstream store serve`` on a fresh store with the schema and one run of teams a and b."""
    tmp = tmp_path_factory.mktemp("serve")
    store, port = tmp / "store", free_port()
    log = (tmp / "serve.log").open("ab")
    proc = subprocess.Popen(
        [RANKSTREAM, "store", "serve", "--path", str(store), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=_env_without_password(),
    )  # fmt: skip
    log.close()
    try:
        wait_until(lambda: portfile.find_server(store), "rankstream store serve", 60)
        password = users.users_file(store)
        admin = clickhouse_connect.get_client(
            host="127.0.0.1", port=port, password=_file_password(store), compress=False
        )
        migrate(admin)
        for table in COLUMNS:
            admin.command(f"INSERT INTO rankstream.{table} (team, run_id) VALUES ('a', 'run-a'), ('b', 'run-b')")
        assert password.exists()
        yield store, port, admin
        admin.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp / "serve.log").read_text()[-2000:]
    assert not portfile.port_file(store).exists()


def test_serve_generates_a_private_admin_password(served: tuple[Path, int, Any]) -> None:
    store, port, _ = served
    assert oct(users.users_file(store).stat().st_mode & 0o777) == "0o600"
    with pytest.raises(Exception, match="Code: 516"):
        clickhouse_connect.get_client(host="127.0.0.1", port=port)


def test_cli_reads_the_password_next_to_the_store(served: tuple[Path, int, Any]) -> None:
    store, _, _ = served
    out = subprocess.run(
        [RANKSTREAM, "sql", "--dsn", f"chdb://{store}", "--format", "csv",
         "SELECT team FROM rankstream.runs ORDER BY team"],
        capture_output=True, text=True, timeout=60, env=_env_without_password(), check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["team", "a", "b"]
    runs = subprocess.run(
        [RANKSTREAM, "runs", "--dsn", f"chdb://{store}", "--since", "100000d", "--format", "json"],
        capture_output=True, text=True, timeout=60, env=_env_without_password(), check=False,
    )  # fmt: skip
    assert runs.returncode == 0, runs.stderr


def _jdbc_lib() -> Path:
    if not shutil.which("java") or not shutil.which("mvn"):
        pytest.skip("java and mvn are needed for the JDBC driver")
    if not any(JDBC_LIB.glob("jdbc-v2-*.jar")):
        subprocess.run(
            ["mvn", "-q", "-f", str(JDBC_DIR / "pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={JDBC_LIB}"],
            check=True, timeout=600, capture_output=True,
        )  # fmt: skip
    return JDBC_LIB


def _jdbc(port: int, user: str, password: str, *queries: str) -> dict[str, list[str]]:
    """Each query's output lines (rows, or one 'ERROR ...') from the unmodified driver."""
    out = subprocess.run(
        ["java", "-cp", f"{_jdbc_lib()}/*", str(JDBC_DIR / "JdbcQuery.java"),
         f"jdbc:clickhouse://127.0.0.1:{port}/rankstream", user, password, *queries],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    results: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.stdout.splitlines():
        if line.startswith("QUERY "):
            current = results.setdefault(line[6:], [])
        elif line:
            current.append(line)
    if not results:
        raise AssertionError(out.stdout[-2000:])
    return results


def test_jdbc_driver_team_user_sees_only_its_runs(served: tuple[Path, int, Any]) -> None:
    store, port, _ = served
    user, password = users.add_team_user(store, "a")
    got = _jdbc(
        port, user, password,
        "SELECT run_id, team FROM rankstream.runs FINAL ORDER BY run_id",
        "SELECT count() FROM metrics",
        "SELECT * FROM rankstream.runs AS r JOIN rankstream.steps AS s ON 1 = 1",
        "DROP TABLE rankstream.runs",
        "SELECT * FROM file('/etc/passwd')",
    )  # fmt: skip
    assert got["SELECT run_id, team FROM rankstream.runs FINAL ORDER BY run_id"] == ["run-a\ta"]
    assert got["SELECT count() FROM metrics"] == ["1"]
    assert all(
        "run-b" not in row for row in got["SELECT * FROM rankstream.runs AS r JOIN rankstream.steps AS s ON 1 = 1"]
    )
    assert got["DROP TABLE rankstream.runs"][0].startswith("ERROR Code: 164.")
    assert got["SELECT * FROM file('/etc/passwd')"][0].startswith("ERROR Code: 497.")
    wrong = _jdbc(port, user, password + "x", "SELECT 1")
    assert wrong["SELECT 1"][0].startswith("ERROR Code: 516.")


def test_jdbc_driver_admin_sees_every_team(served: tuple[Path, int, Any]) -> None:
    store, port, _ = served
    got = _jdbc(port, "default", _file_password(store), "SELECT team FROM rankstream.runs ORDER BY team")
    assert got["SELECT team FROM rankstream.runs ORDER BY team"] == ["a", "b"]


def test_clickhouse_connect_team_user(served: tuple[Path, int, Any]) -> None:
    store, port, _ = served
    user, password = users.add_team_user(store, "b", "b_reader")
    client = clickhouse_connect.get_client(host="127.0.0.1", port=port, username=user, password=password)
    assert client.query("SELECT DISTINCT run_id FROM rankstream.events").result_rows == [("run-b",)]
    df = client.query_df("SELECT team, run_id FROM rankstream.alerts")
    assert df["team"].tolist() == ["b"]


def test_tls_serve(tmp_path: Path) -> None:
    """--tls-cert/--tls-key: HTTPS only, and the CLI follows the port file's tls flag."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    store, port = tmp_path / "store", free_port()
    proc = subprocess.Popen(
        [RANKSTREAM, "store", "serve", "--path", str(store), "--port", str(port),
         "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env_without_password(),
    )  # fmt: skip
    try:
        wait_until(lambda: portfile.find_server(store), "rankstream store serve --tls-cert", 60)
        assert portfile.uses_tls(store)
        client = clickhouse_connect.get_client(
            host="127.0.0.1", port=port, password=_file_password(store), secure=True, ca_cert=str(cert)
        )
        assert client.command("SELECT 41 + 1") == 42
        with pytest.raises(Exception):  # noqa: B017 - plain HTTP on the TLS port fails, whatever the client says
            clickhouse_connect.get_client(
                host="127.0.0.1", port=port, password=_file_password(store), connect_timeout=3
            )
        out = subprocess.run(
            [RANKSTREAM, "sql", "--dsn", f"chdb://{store}", "--format", "csv", "SELECT 7"],
            capture_output=True, text=True, timeout=60, env=_env_without_password(), check=False,
        )  # fmt: skip
        assert out.returncode == 0 and out.stdout.split() == ["7", "7"], out.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
