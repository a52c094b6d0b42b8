"""Who is calling: credentials as ClickHouse's HTTP interface takes them, checked against the store's users.

ClickHouse accepts, in this order, ``X-ClickHouse-User`` / ``X-ClickHouse-Key``
headers, ``user`` / ``password`` URL parameters, and HTTP Basic auth; with none,
the caller is ``default`` with an empty password (which fails here: the admin
always has a password). Failures are ClickHouse's code 516, HTTP 401.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from rankstream.sinks.store import users
from rankstream.sinks.store.http_request import QueryError
from rankstream.sinks.store.users import ADMIN, Principal, Users

AUTHENTICATION_FAILED = 516


def credentials(headers: Mapping[str, str], params: Mapping[str, str]) -> tuple[str, str]:
    """``(user, password)`` from the headers (names in lower case), the URL parameters or Basic auth."""
    user = headers.get("x-clickhouse-user")
    key = headers.get("x-clickhouse-key")
    if user is not None or key is not None:
        return user or ADMIN, key or ""
    if "user" in params or "password" in params:
        return params.get("user") or ADMIN, params.get("password", "")
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "basic" and token:
        try:
            name, _, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise failed("?") from None
        return name or ADMIN, password
    return ADMIN, ""


def failed(name: str) -> QueryError:
    return QueryError(
        f"Code: {AUTHENTICATION_FAILED}. DB::Exception: {name}: Authentication failed: password is incorrect, "
        "or there is no user with such name. (AUTHENTICATION_FAILED)",
        AUTHENTICATION_FAILED,
    )


class Authenticator:
    """The users of one store, re-read when the users file changes (``rankstream store user add`` while serving)."""

    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self._lock = threading.Lock()
        self._users: Users = users.ensure(store_path)
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(users.users_file(self.store_path))
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def current(self) -> Users:
        stamp = self._file_stamp()
        if stamp != self._stamp:
            with self._lock:
                loaded = users.load(self.store_path)
                if loaded is not None:
                    self._users = loaded
                self._stamp = stamp
        return self._users

    def authenticate(self, name: str, password: str) -> Principal:
        principal = self.current().authenticate(name, password)
        if principal is None:
            raise failed(name)
        return principal
