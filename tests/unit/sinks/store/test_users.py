"""The store's users file: generated admin password, 0600, team users by salted digest, constant-time checks."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from rankstream.errors import ConfigError
from rankstream.sinks.store import users


@pytest.fixture(autouse=True)
def _no_env_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(users.ENV_PASSWORD, raising=False)


def test_first_start_generates_an_admin_password_in_a_0600_file(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = users.ensure(store)
    path = users.users_file(store)
    assert path == tmp_path / "store.users.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.admin_password) >= 24
    assert users.ensure(store).admin_password == first.admin_password  # kept across starts
    assert users.admin_password(store) == first.admin_password
    assert users.ensure(tmp_path / "other").admin_password != first.admin_password


def test_admin_authentication(tmp_path: Path) -> None:
    u = users.ensure(tmp_path / "store")
    assert u.authenticate("default", u.admin_password) == users.Principal("default")
    assert u.authenticate("default", u.admin_password + "x") is None
    assert u.authenticate("default", "") is None
    assert u.authenticate("nobody", u.admin_password) is None


def test_team_users_store_digests_only(tmp_path: Path) -> None:
    store = tmp_path / "store"
    name, password = users.add_team_user(store, "vision")
    assert name == "vision_ro"
    text = users.users_file(store).read_text()
    assert password not in text
    entry = json.loads(text)["teams"]["vision_ro"]
    assert entry["team"] == "vision" and len(entry["sha256"]) == 64
    u = users.load(store)
    assert u is not None
    who = u.authenticate("vision_ro", password)
    assert who is not None and who.team == "vision" and not who.admin
    assert u.authenticate("vision_ro", password[:-1]) is None
    _, again = users.add_team_user(store, "vision")  # a new password replaces the old one
    u = users.load(store)
    assert u is not None and u.authenticate("vision_ro", password) is None and u.authenticate("vision_ro", again)
    assert users.remove_user(store, "vision_ro") and not users.remove_user(store, "vision_ro")


@pytest.mark.parametrize("team", ["", "a'b", "a b", "x" * 65, "../etc"])
def test_bad_team_names_are_refused(tmp_path: Path, team: str) -> None:
    with pytest.raises(ConfigError):
        users.add_team_user(tmp_path / "store", team)


def test_the_admin_name_cannot_be_a_team_user(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="admin"):
        users.add_team_user(tmp_path / "store", "vision", "default")


def test_env_password_wins_and_is_kept_in_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    users.ensure(store)
    monkeypatch.setenv(users.ENV_PASSWORD, "from-the-env")
    assert users.ensure(store).admin_password == "from-the-env"
    monkeypatch.delenv(users.ENV_PASSWORD)
    assert users.admin_password(store) == "from-the-env"


def test_a_widened_file_is_made_0600_again(tmp_path: Path) -> None:
    store = tmp_path / "store"
    users.ensure(store)
    users.users_file(store).chmod(0o644)
    users.load(store)
    assert stat.S_IMODE(users.users_file(store).stat().st_mode) == 0o600
