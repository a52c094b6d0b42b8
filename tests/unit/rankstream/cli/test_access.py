"""`rankstream access kafka` without a broker: the teams YAML, the printed commands, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rankstream.errors import ConfigError
from rankstream.kafka_access import PasswordRef, load_access_config, parse_access_config

EXAMPLE = Path(__file__).resolve().parents[4] / "infra" / "kafka" / "teams.example.yaml"


def access(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rankstream.cli", "access", "kafka", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_example_prints_every_grant_without_reading_a_password() -> None:
    done = access(str(EXAMPLE), "--bootstrap", "kafka:9092")  # neither password variable nor file exists here
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum("--entity-type users" in line for line in lines) == 3
    assert any("User:team-vision --operation Write --topic rankstream.vision.events" in line for line in lines)
    assert any("User:team-nlp --operation Read --topic rankstream.nlp.alerts" in line for line in lines)
    assert any("User:rankstream-service --operation All --topic rankstream. --resource-pattern-type prefixed" in line
               for line in lines)  # fmt: skip
    assert all("kafka:9092" in line for line in lines if not line.startswith("#"))


def test_prefix_flag_wins_over_the_yaml() -> None:
    done = access(str(EXAMPLE), "--prefix", "acme")
    assert done.returncode == 0 and "--topic acme.vision.events" in done.stdout and "rankstream." not in done.stdout


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "teams.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("teams: [\n", "not valid YAML"),
        ("- a\n", "expected a mapping at the top level"),
        ("service: {user: s, password_env: P}\nteams: []\n", "teams: expected a list"),
        ("service: {user: s, password_env: P}\nteams: [{team: a.b, user: u, password_env: P}]\n",
         "teams[0].team: 'a.b': letters, digits"),
        ("service: {user: s, password_env: P}\nteams: [{team: a, user: u, password: hunter2}]\n",
         "teams[0].password: passwords never go in this file"),
        ("service: {user: s, password_env: P}\nteams: [{team: a, user: u}]\n",
         "teams[0]: give exactly one of password_env"),
        ("service: {user: s, password_env: P}\nteams: [{team: a, user: 'u v', password_env: P}]\n",
         "teams[0].user: expected a SCRAM user name"),
        ("service: {user: s, password_env: P}\nteams: [{team: a, user: u, password_env: P},"
         " {team: a, user: w, password_env: Q}]\n", "team 'a' appears more than once"),
        ("service: {user: u, password_env: P}\nteams: [{team: a, user: u, password_env: P}]\n",
         "user 'u' appears more than once"),
        ("teams: [{team: a, user: u, password_env: P}]\n", "service: expected a mapping"),
        ("tenants: []\n", "unknown key 'tenants'"),
    ],
)  # fmt: skip
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, text: str, message: str) -> None:
    done = access(write(tmp_path, text))
    assert done.returncode == 2, done
    assert done.stderr.startswith("rankstream: error: configuration error: ") and message in done.stderr
    assert len(done.stderr.splitlines()) == 1 and "hunter2" not in done.stderr


def test_apply_needs_admin_credentials_and_every_password(tmp_path: Path) -> None:
    config = write(
        tmp_path, "service: {user: s, password_env: SVC_PW}\nteams: [{team: a, user: u, password_env: A_PW}]\n"
    )
    plain = access(config, "--apply")
    assert plain.returncode == 2 and "--apply needs the admin's credentials" in plain.stderr
    admin = {
        "RANKSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "RANKSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
        "RANKSTREAM_SASL_USERNAME": "admin",
        "RANKSTREAM_SASL_PASSWORD": "x",
        "A_PW": "team-a-secret",
    }
    missing = access(config, "--apply", "--bootstrap", "127.0.0.1:1", env=admin)
    assert missing.returncode == 2, missing
    assert missing.stderr.strip().endswith("service.password: environment variable SVC_PW is not set")


def test_passwords_come_from_env_or_files(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    config = parse_access_config(
        {
            "prefix": "p",
            "service": {"user": "svc", "password_env": "SVC"},
            "teams": [{"team": "a", "user": "team-a", "password_file": str(secret)}],
        }
    )
    assert config.prefix == "p" and [t.team for t in config.team_principals] == ["a"]
    assert all(not t.password for t in config.team_principals)  # nothing read until asked
    teams, service = config.principals({"SVC": "from-env"})
    assert teams[0].password == "from-a-file" and service == ("svc", "from-env")
    assert "from-a-file" not in repr(teams[0])
    with pytest.raises(ConfigError, match="is empty"):
        secret.write_text("\n")
        PasswordRef(file=str(secret)).read("teams.a.password", {})


def test_example_config_parses() -> None:
    config = load_access_config(EXAMPLE)
    assert [t.team for t in config.team_principals] == ["vision", "nlp"] and config.service_user == "rankstream-service"
