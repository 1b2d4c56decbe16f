"""Bearer keys for ``memedit serve``: each key is bound to one namespace.

Keys live in an ``api_keys`` table of the memory's database (SQLite, or PostgreSQL for a
``postgresql://`` URL). Only the SHA-256 of
a key is stored (and its id, which is also the start of the key, for listing and
revoking): the key itself is shown once, when it is made. A key looks like
``mk-<id>-<secret>``; the id is 8 hex digits, the secret 32 random bytes.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
from dataclasses import asdict, dataclass
from typing import Any

from .edit import utc_now
from .errors import ConflictError, MemeditError
from .memory import check_namespace
from .storage import is_postgres

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    name TEXT,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
"""


class KeyNotFound(MemeditError, LookupError):
    """No key with this id."""

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class ApiKey:
    """A key as listed: never the key itself, only its id (the key starts ``mk-<id>-``)."""

    id: str
    namespace: str
    name: str | None
    created_at: str
    revoked_at: str | None

    @property
    def prefix(self) -> str:
        return f"mk-{self.id}-"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "prefix": self.prefix}


def key_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class _PgConnection:
    """A PostgreSQL connection that takes the ``?`` placeholders of the queries below."""

    def __init__(self, url: str) -> None:
        from .pgstore import connect

        self.conn = connect(url)

    def execute(self, sql: str, params: tuple = ()):
        return self.conn.execute(sql.replace("?", "%s"), params or None)

    def close(self) -> None:
        self.conn.close()


class KeyRing:
    """The keys of one memedit database (its own connection; safe to share across threads)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        with self._lock:
            if is_postgres(self.path):
                self._conn = _PgConnection(self.path)
            else:
                self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(SCHEMA)

    def create(self, namespace: str, name: str | None = None) -> tuple[str, ApiKey]:
        """A new key for ``namespace``: (the key, to show once; its listing entry)."""
        namespace = check_namespace(namespace)
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise ValueError(f"key name must be text of at most 200 characters, got {name!r}")
        key_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
        token = f"mk-{key_id}-{secret}"
        entry = ApiKey(key_id, namespace, name, utc_now(), None)
        with self._lock:
            self._conn.execute("INSERT INTO api_keys (id, sha256, namespace, name, created_at) VALUES (?, ?, ?, ?, ?)",
                               (key_id, key_hash(token), namespace, name, entry.created_at))
        return token, entry

    def list(self, include_revoked: bool = True) -> list[ApiKey]:
        """Every key, oldest first."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self._lock:
            rows = self._conn.execute(f"SELECT id, namespace, name, created_at, revoked_at FROM api_keys{where} "
                                      "ORDER BY created_at, id").fetchall()
        return [ApiKey(*row) for row in rows]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke the key with this id (``mk-<id>-...`` also accepted); it stops working at once."""
        key_id = key_id[3:].split("-")[0] if isinstance(key_id, str) and key_id.startswith("mk-") else key_id
        with self._lock:
            cur = self._conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (utc_now(), key_id))
            row = self._conn.execute("SELECT id, namespace, name, created_at, revoked_at FROM api_keys WHERE id = ?",
                                     (key_id,)).fetchone()
        if row is None:
            raise KeyNotFound(f"no key with id {key_id!r}; `memedit keys list` shows the ids")
        if cur.rowcount == 0:
            raise ConflictError(f"key {key_id!r} was already revoked at {row[4]}")
        return ApiKey(*row)

    def namespace_for(self, token: str) -> str | None:
        """The namespace of a live key; None for an unknown or revoked one."""
        with self._lock:
            row = self._conn.execute("SELECT namespace FROM api_keys WHERE sha256 = ? AND revoked_at IS NULL",
                                     (key_hash(token),)).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
