"""The SQLite store (the embedded default): edits, the append-only event log, cached
embeddings and artifact references in one file, through the queries of ``memedit.storage``.

The store is the only source of truth. Every write runs in one ``BEGIN IMMEDIATE``
transaction, so a crash leaves either all of a write or none of it. Every query
takes the namespace; nothing here reads across namespaces except ``namespaces()``.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from sqlite_utils import Database

from .checks import unicode_problem
from .errors import ArgumentError, MemeditError, SchemaTooNew, StoreDamaged, StoreOpenError, StoreReadOnly
from .storage import EDIT_INDEXES, STATUSES, Action, Event, Storage, StoredEdit, edits_table, row_to_edit, schema  # noqa: F401

SCHEMA_VERSION = 2  # 2: edits may be "consolidated" (written into a model's weights)


# SQLite's column types for the shared schema of memedit.storage.
RID = "INTEGER PRIMARY KEY"
SCHEMA = schema(rid=RID, seq="INTEGER PRIMARY KEY AUTOINCREMENT", integer="INTEGER", vector="BLOB")


def db_path(path: Any) -> str:
    """A database path as text, checked: a non-empty file name (or ``:memory:``) that is valid Unicode."""
    if not isinstance(path, (str, os.PathLike)):
        raise StoreOpenError(f"the database path must be a file name (text or a path), got {type(path).__name__} {path!r}")
    text = os.fspath(path)
    if isinstance(text, bytes) or not text.strip():
        raise StoreOpenError(f"the database path {text!r} is empty or not text; give a file name such as 'memedit.db' "
                             f"(or ':memory:' for a database that lasts only as long as the process)")
    problem = unicode_problem(text)
    if problem:
        raise StoreOpenError(f"the database path {text!r} {problem}")
    return text


def _schema_version(path: str, value: Any) -> int:
    """The stored schema version as a number; StoreOpenError when it is not one."""
    if isinstance(value, int) or (isinstance(value, str) and value.isascii() and value.isdigit()):
        return int(value)
    raise StoreOpenError(f"{path}: the schema version in its meta table is {value!r}, not a whole number; the file was "
                         f"changed by hand or is not a memedit store. Set it back (UPDATE meta SET value = "
                         f"'{SCHEMA_VERSION}' WHERE key = 'schema_version') or open another file")


def _not_writable(path: str) -> bool:
    """The database file exists but this user may not write it or its folder."""
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.isfile(path) and not (os.access(path, os.W_OK) and os.access(folder, os.W_OK))


def translate(err: sqlite3.Error, path: str) -> MemeditError:
    """The MemeditError for an SQLite error on the database at ``path``."""
    text = str(err)
    if "readonly" in text.replace(" ", "").replace("-", "") or _not_writable(path):
        return StoreReadOnly(f"the memedit database {path!r} is read-only ({text}); nothing was written. Open it as a user "
                             f"who may write the file and its folder (SQLite keeps -wal and -shm files beside it), or copy it")
    if "not a database" in text:
        return StoreOpenError(f"cannot open the memedit database {path!r} ({text}); the file is not an SQLite database. "
                              f"Give the path of a memedit database, or a new file name to start one")
    if any(w in text for w in ("malformed", "disk I/O", "corrupt")):
        return StoreDamaged(f"the memedit database {path!r} is damaged ({text}); nothing was written. Restore it from a "
                            f"backup, or save what SQLite can still read with: sqlite3 {path} .recover > recovered.sql")
    if "locked" in text or "busy" in text:
        return StoreOpenError(f"the memedit database {path!r} is busy ({text}); another process holds a write lock; try again")
    return StoreOpenError(f"the memedit database {path!r} failed ({type(err).__name__}: {text}); "
                          f"check that it is a memedit SQLite file and that its folder exists and is writable")


class _Cursor(sqlite3.Cursor):
    """A cursor that raises a MemeditError (``translate``) for what SQLite reports while reading."""

    def _run(self, method, *args):
        try:
            return method(*args)
        except sqlite3.DatabaseError as err:
            if isinstance(err, (sqlite3.IntegrityError, sqlite3.ProgrammingError)):
                raise
            raise translate(err, self.connection.memedit_path) from None
        except UnicodeEncodeError as err:  # a parameter no check caught: text that is not valid Unicode
            raise ArgumentError("a text argument", f"is not valid Unicode ({err.reason} at position {err.start}); "
                                                   f"pass UTF-8 text") from None

    def execute(self, *args):
        return self._run(super().execute, *args)

    def executemany(self, *args):
        return self._run(super().executemany, *args)

    def executescript(self, *args):
        return self._run(super().executescript, *args)

    def fetchone(self):
        return self._run(super().fetchone)

    def fetchmany(self, *args):
        return self._run(super().fetchmany, *args)

    def fetchall(self):
        return self._run(super().fetchall)

    def __next__(self):
        return self._run(super().__next__)


class _Connection(sqlite3.Connection):
    """A connection whose every statement goes through ``_Cursor``: the one place where SQLite's
    errors (damaged pages, a read-only file, a lock held too long) become MemeditErrors."""

    memedit_path = "?"

    def _closed(self, err: Exception) -> StoreOpenError:
        return StoreOpenError(f"the memedit database {self.memedit_path!r} is closed ({err}); "
                              f"open it again: Memory({self.memedit_path!r})")

    def cursor(self, factory=_Cursor):
        try:
            return super().cursor(factory)
        except sqlite3.ProgrammingError as err:  # the connection is closed
            raise self._closed(err) from None

    @property
    def in_transaction(self) -> bool:
        try:
            return super().in_transaction
        except sqlite3.ProgrammingError as err:
            raise self._closed(err) from None

    def execute(self, *args):
        return self.cursor().execute(*args)

    def executemany(self, *args):
        return self.cursor().executemany(*args)

    def executescript(self, *args):
        return self.cursor().executescript(*args)


class Store(Storage):
    """Edits, events and embeddings in one SQLite file (WAL mode). Artifact files go in
    ``artifacts_dir`` (default: ``<db>-artifacts`` beside the file)."""

    kind = "sqlite"
    duplicate_error = sqlite3.IntegrityError
    no_limit = -1
    # "+namespace" keeps SQLite on the primary key; with the namespace index it would
    # scan every edit of the namespace (14 ms a search at 100,000 edits).
    rid_namespace = "+namespace"
    subject_nocase = "subject = ? COLLATE NOCASE"

    def __init__(self, path: str, timeout: float = 30.0, artifacts_dir: str | Path | None = None) -> None:
        self.path = path
        self._artifacts_dir = artifacts_dir
        self._writing = False
        try:
            conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False, factory=_Connection)
        except sqlite3.Error as err:
            if _not_writable(path):
                raise translate(err, path) from None
            raise StoreOpenError(f"cannot open the memedit database {path!r} ({err}); "
                                 "check that its folder exists and that the path names a file, not a folder") from None
        conn.memedit_path = path
        self.db = Database(conn)
        self.conn = conn
        try:
            self._open()
        except BaseException:
            conn.close()
            raise

    def _open(self) -> None:
        if self.path != ":memory:":
            self.db.enable_wal()
        self.db.execute("PRAGMA foreign_keys = ON")
        with self.write():
            self.db.executescript(SCHEMA)
            stored = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = None if stored is None else _schema_version(self.path, stored[0])
            if version is None:
                self.conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif version > SCHEMA_VERSION:
                raise SchemaTooNew(f"{self.path} was written by a newer memedit (schema {version}); upgrade memedit to open it")
        if version is not None and version < 2:
            self._migrate_to_2()

    def _migrate_to_2(self) -> None:
        """Rebuild the edits table so its status check allows "consolidated" (SQLite cannot alter
        a CHECK in place). One transaction: a crash leaves the version 1 table untouched."""
        self.conn.execute("PRAGMA foreign_keys = OFF")
        try:
            with self.write():
                self.conn.execute(edits_table("edits_v2", RID))
                self.conn.execute("INSERT INTO edits_v2 SELECT * FROM edits")
                self.conn.execute("DROP TABLE edits")
                self.conn.execute("ALTER TABLE edits_v2 RENAME TO edits")
                for sql in EDIT_INDEXES:
                    self.conn.execute(sql)
                self.conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        finally:
            self.conn.execute("PRAGMA foreign_keys = ON")

    def close(self) -> None:
        self.conn.close()

    # -- transactions -------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[None]:
        """One write transaction, taken at once so concurrent writers queue instead of deadlocking.
        A ``write()`` inside another joins it: both commit or roll back together."""
        if self._writing:
            yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._writing = True
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:  # SQLite may have rolled back already (a damaged page, a full disk)
                with suppress(MemeditError):
                    self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")
        finally:
            self._writing = False

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: every query inside sees the same committed state."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")

    def artifacts_folder(self) -> Path | None:
        if self._artifacts_dir is not None:
            return Path(self._artifacts_dir)
        return None if self.path == ":memory:" else Path(f"{self.path}-artifacts")

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params))

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    def _vector_in(self, vector: np.ndarray) -> bytes:
        return vector.tobytes()

    def _vector_out(self, value: bytes) -> np.ndarray:
        return np.frombuffer(value, dtype=np.float32)
