"""Who may use an embedded store's HTTP interface: its admin and per-team read-only users.

They live in ``<store>.users.json`` next to the store directory, mode 0600, so
only the account that owns the store (and runs the sink) can read the admin
password; the CLI (``rankstream sql``, ``runs``, ``store``) reads it from there.
The admin password is generated at the first start; ``RANKSTREAM_STORE_PASSWORD``
replaces it (containers, CI). Team passwords are stored as salted SHA-256
digests only (they are random 24-byte tokens, so a slow hash buys nothing) and
shown once, when ``rankstream store user add`` creates them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankstream.errors import ConfigError

log = logging.getLogger("rankstream.sink.http")

#: The admin's name: what ClickHouse clients send when given none.
ADMIN = "default"
ENV_PASSWORD = "RANKSTREAM_STORE_PASSWORD"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the admin (``team`` None) or a team's read-only user."""

    name: str
    team: str | None = None

    @property
    def admin(self) -> bool:
        return self.team is None


@dataclass(frozen=True)
class TeamUser:
    name: str
    team: str
    salt: str
    sha256: str


@dataclass
class Users:
    """The admin password and the team users of one store."""

    admin_password: str
    teams: dict[str, TeamUser] = field(default_factory=dict)

    def authenticate(self, name: str, password: str) -> Principal | None:
        """The principal for these credentials, or None; every comparison takes constant time."""
        if name == ADMIN:
            ok = hmac.compare_digest(password.encode(), self.admin_password.encode())
            return Principal(ADMIN) if ok else None
        user = self.teams.get(name)
        salt = user.salt if user else "0" * 32
        digest = _digest(salt, password)
        if user is not None and hmac.compare_digest(digest, user.sha256):
            return Principal(user.name, user.team)
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "admin": {"user": ADMIN, "password": self.admin_password},
            "teams": {
                u.name: {"team": u.team, "salt": u.salt, "sha256": u.sha256}
                for u in sorted(self.teams.values(), key=lambda u: u.name)
            },
        }


def users_file(store_path: Path) -> Path:
    return store_path.parent / f"{store_path.name}.users.json"


def _digest(salt: str, password: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + password.encode()).hexdigest()


def check_name(kind: str, value: str) -> str:
    if not _NAME_RE.match(value):
        raise ConfigError(f"{kind} {value!r}: letters, digits, '_', '.', '-' only (at most 64)")
    return value


def load(store_path: Path) -> Users | None:
    """The store's users, or None when it has no users file yet (the env password wins over the file's)."""
    path = users_file(store_path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable users file ({exc})") from None
    _tighten(path)
    teams = {
        name: TeamUser(name, str(t["team"]), str(t["salt"]), str(t["sha256"]))
        for name, t in dict(raw.get("teams") or {}).items()
    }
    password = os.environ.get(ENV_PASSWORD) or str(raw["admin"]["password"])
    return Users(password, teams)


def ensure(store_path: Path) -> Users:
    """The store's users, creating the file with a generated admin password at the first start."""
    users = load(store_path)
    env = os.environ.get(ENV_PASSWORD)
    if users is None:
        users = Users(env or secrets.token_urlsafe(24))
        _save(store_path, users)
        log.info("store: admin password generated in %s (mode 0600)", users_file(store_path))
    elif env and _stored_admin(store_path) != env:
        _save(store_path, users)  # keep the file's admin password the one in force, for the CLI
    return users


def _stored_admin(store_path: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return str(json.loads(users_file(store_path).read_text())["admin"]["password"])
    return None


def admin_password(store_path: Path) -> str | None:
    """What the CLI sends as the admin's password: ``RANKSTREAM_STORE_PASSWORD``, else the file's."""
    return os.environ.get(ENV_PASSWORD) or _stored_admin(store_path)


def add_team_user(store_path: Path, team: str, name: str | None = None) -> tuple[str, str]:
    """Create (or reset the password of) a team's read-only user; returns ``(name, password)``."""
    check_name("team", team)
    name = check_name("user", name or f"{team}_ro")
    if name == ADMIN:
        raise ConfigError(f"user {name!r} is the admin")
    users = ensure(store_path)
    password = secrets.token_urlsafe(24)
    salt = secrets.token_hex(16)
    users.teams[name] = TeamUser(name, team, salt, _digest(salt, password))
    _save(store_path, users)
    return name, password


def remove_user(store_path: Path, name: str) -> bool:
    users = load(store_path)
    if users is None or users.teams.pop(name, None) is None:
        return False
    _save(store_path, users)
    return True


def _save(store_path: Path, users: Users) -> None:
    path = users_file(store_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(users.to_json(), out, indent=1)
    tmp.replace(path)


def _tighten(path: Path) -> None:
    """A users file others can read is made 0600 again (a copy or an editor may have widened it)."""
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            log.warning("store: %s was readable by others; made it 0600", path)
            path.chmod(0o600)
