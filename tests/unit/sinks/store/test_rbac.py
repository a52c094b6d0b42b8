"""Server RBAC generated per team from one config (issue 14 item 4); its SQL is parse-tested on the engine in
tests/integration/sinks/test_schema.py."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from rankstream.errors import ConfigError
from rankstream.sinks.store.rbac import load_config, parse_config, render
from rankstream.sinks.store.tables import COLUMNS
from tests.paths import REPO_ROOT

CONFIG = REPO_ROOT / "infra" / "clickhouse" / "access.yaml"
RBAC = REPO_ROOT / "infra" / "clickhouse" / "rbac.sql"


def test_committed_rbac_sql_is_the_configs_output() -> None:
    assert render(load_config(CONFIG)) == RBAC.read_text(), "regenerate: rankstream store rbac access.yaml > rbac.sql"


def test_every_team_gets_a_policy_on_every_table_and_readonly_users() -> None:
    raw = {
        "sink": {"name": "sink_w", "password_sha256": hashlib.sha256(b"pw").hexdigest()},
        "teams": [
            {"name": "vision", "users": [{"name": "v_ro", "password": "x'y"},
                                         {"name": "v_bi", "identified": "WITH ldap SERVER 'corp'"}]},
            {"name": "speech", "users": [{"name": "s_ro", "password": "p", "host": "IP '10.0.0.0/8'"}]},
        ],
    }  # fmt: skip
    sql = render(parse_config(raw))
    for team in ("vision", "speech"):
        for table in COLUMNS:
            assert (
                f"CREATE ROW POLICY IF NOT EXISTS team_{team} ON rankstream.{table} FOR SELECT USING team = '{team}'"
                f" TO team_{team};" in sql
            )
    assert "CREATE USER IF NOT EXISTS v_ro IDENTIFIED WITH sha256_password BY 'x\\'y' SETTINGS readonly = 1;" in sql
    assert "v_bi IDENTIFIED WITH ldap SERVER 'corp' SETTINGS readonly = 1;" in sql
    assert "s_ro IDENTIFIED WITH sha256_password BY 'p' HOST IP '10.0.0.0/8' SETTINGS readonly = 1;" in sql
    assert f"sink_w IDENTIFIED WITH sha256_hash BY '{hashlib.sha256(b'pw').hexdigest()}';" in sql
    assert "GRANT team_speech TO s_ro;" in sql and "ALTER USER s_ro DEFAULT ROLE team_speech;" in sql


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"teams": []}, "sink"),
        ({"sink": {"name": "s", "password": "p"}, "teams": [{"name": "a-b", "users": []}]}, "letters"),
        ({"sink": {"name": "s", "password": "p"}, "teams": [{"name": "a", "users": [{"name": "u"}]}]}, "exactly one"),
        ({"sink": {"name": "s", "password_sha256": "abc"}, "teams": []}, "64 hex"),
        ({"sink": {"name": "s", "identified": "x; DROP USER y"}, "teams": []}, "one clause"),
        ({"sink": {"name": "s", "password": "p"}, "teams": [{"name": "a", "users": [{"name": "s", "password": "q"}]}]},
         "twice"),
        ({"sink": {"name": "s", "password": "p"}, "teams": [{"name": "a"}, {"name": "a"}]}, "twice"),
    ],
)  # fmt: skip
def test_bad_configs_say_why(raw: dict, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_config(raw)


def test_cli_prints_the_sql_and_fails_in_one_line(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "rankstream.cli", "store", "rbac"]
    ok = subprocess.run([*cli, str(CONFIG)], capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0 and ok.stdout == RBAC.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("teams: [1]\nsink: {name: s, password: p}\n")
    out = subprocess.run([*cli, str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "each team" in out.stderr
