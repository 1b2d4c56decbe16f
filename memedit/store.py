"""The SQLite store: edits, the append-only event log, cached embeddings and artifact references.

The store is the only source of truth. Every write runs in one ``BEGIN IMMEDIATE``
transaction, so a crash leaves either all of a write or none of it. Every query
takes the namespace; nothing here reads across namespaces except ``namespaces()``.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterator, Sequence

import numpy as np
from sqlite_utils import Database

from .checks import unicode_problem
from .edit import Edit, utc_now
from .errors import ArgumentError, ConflictError, EditNotFound, MemeditError, StoreDamaged, StoreOpenError, StoreReadOnly

SCHEMA_VERSION = 2  # 2: edits may be "consolidated" (written into a model's weights)
STATUSES = ("active", "superseded", "retracted", "consolidated")


class Action(str, Enum):
    """What an event of the log records (stored as the value). ``add``, ``restore`` and
    ``revert`` put an edit on the retrieval path; ``retract``, ``supersede`` and
    ``consolidate`` take it off. A ``consolidate`` or ``revert`` event without an edit id
    is the batch-level record of a consolidation batch."""

    ADD = "add"
    SUPERSEDE = "supersede"
    RETRACT = "retract"
    RESTORE = "restore"
    CONSOLIDATE = "consolidate"
    REVERT = "revert"

    def __str__(self) -> str:
        return self.value
EDIT_COLUMNS = ("id", "namespace", "kind", "subject", "relation", "target", "old_target", "prompt",
                "statement", "aliases", "source", "supersedes", "created_at")

EDITS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    rid INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('insert', 'modify', 'erase')),
    subject TEXT, relation TEXT, target TEXT, old_target TEXT, prompt TEXT,
    statement TEXT NOT NULL,
    aliases TEXT NOT NULL DEFAULT '[]',
    source TEXT, supersedes TEXT,
    created_at TEXT NOT NULL,
    key TEXT,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'superseded', 'retracted', 'consolidated')),
    superseded_by TEXT,
    UNIQUE (namespace, id)
);
"""

EDIT_INDEXES = (
    "CREATE INDEX IF NOT EXISTS edits_by_key ON edits (namespace, key, status);",
    "CREATE INDEX IF NOT EXISTS edits_by_status ON edits (namespace, status);",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
{edits_table}{edit_indexes}CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    edit_id TEXT,
    edit_rid INTEGER,
    action TEXT NOT NULL,
    at TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_by_namespace ON events (namespace, seq);
CREATE INDEX IF NOT EXISTS events_by_edit ON events (namespace, edit_id, seq);
CREATE TABLE IF NOT EXISTS embeddings (
    edit_rid INTEGER PRIMARY KEY REFERENCES edits (rid),
    model TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    file TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    saved_at TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
""".replace("{edits_table}", EDITS_TABLE.format(name="edits")).replace("{edit_indexes}", "\n".join(EDIT_INDEXES) + "\n")


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


@dataclass(frozen=True)
class StoredEdit(Edit):
    """An edit as the store holds it: with its status and, if superseded, the newer edit's id."""

    status: str = "active"
    superseded_by: str | None = None


@dataclass(frozen=True)
class Event:
    """One entry of the append-only event log."""

    seq: int
    namespace: str
    edit_id: str | None
    action: str
    at: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "namespace": self.namespace, "edit_id": self.edit_id,
                "action": self.action, "at": self.at, "detail": self.detail}


def _chunks(values: list[Any], size: int = 500) -> Iterator[tuple[list[Any], str]]:
    """Slices of ``values`` small enough for one SQL ``IN (...)``, with their placeholders."""
    for start in range(0, len(values), size):
        chunk = values[start:start + size]
        yield chunk, ",".join("?" * len(chunk))


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


def row_to_edit(row: dict[str, Any]) -> StoredEdit:
    fields = {name: row[name] for name in EDIT_COLUMNS}
    fields["aliases"] = tuple(json.loads(row["aliases"]))
    return StoredEdit(**fields, status=row["status"], superseded_by=row["superseded_by"])


class Store:
    """Edits, events and embeddings in one SQLite file (WAL mode)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
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
                raise ConflictError(f"{self.path} was written by a newer memedit (schema {version}); upgrade memedit to open it")
        if version is not None and version < 2:
            self._migrate_to_2()

    def _migrate_to_2(self) -> None:
        """Rebuild the edits table so its status check allows "consolidated" (SQLite cannot alter
        a CHECK in place). One transaction: a crash leaves the version 1 table untouched."""
        self.conn.execute("PRAGMA foreign_keys = OFF")
        try:
            with self.write():
                self.conn.execute(EDITS_TABLE.format(name="edits_v2"))
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

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params))

    # -- writes (call inside write()) ----------------------------------------

    def log(self, namespace: str, edit_id: str | None, rid: int | None, action: Action, **detail: Any) -> int:
        cur = self.conn.execute(
            "INSERT INTO events (namespace, edit_id, edit_rid, action, at, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (namespace, edit_id, rid, Action(action).value, utc_now(), json.dumps(detail, ensure_ascii=False)),
        )
        return cur.lastrowid

    def insert_edit(self, edit: Edit, status: str = "active") -> int:
        values = [getattr(edit, name) for name in EDIT_COLUMNS]
        values[EDIT_COLUMNS.index("aliases")] = json.dumps(list(edit.aliases), ensure_ascii=False)
        try:
            cur = self.conn.execute(
                f"INSERT INTO edits ({', '.join(EDIT_COLUMNS)}, key, status) VALUES ({', '.join('?' * (len(EDIT_COLUMNS) + 2))})",
                (*values, edit.key, status),
            )
        except sqlite3.IntegrityError:
            raise ConflictError(f"an edit with id {edit.id!r} already exists in namespace {edit.namespace!r}; leave id out to get a new one") from None
        return cur.lastrowid

    def put_vector(self, rid: int, model: str, vector: np.ndarray) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO embeddings (edit_rid, model, vector) VALUES (?, ?, ?)",
            (rid, model, np.asarray(vector, dtype=np.float32).tobytes()),
        )

    def set_status(self, row: dict[str, Any], status: str, action: Action, superseded_by: str | None = None,
                   **detail: Any) -> None:
        """Give the edit of ``row`` a new status and log the ``action`` event that says why
        (a status never changes without its event)."""
        self.conn.execute("UPDATE edits SET status = ?, superseded_by = ? WHERE rid = ?", (status, superseded_by, row["rid"]))
        self.log(row["namespace"], row["id"], row["rid"], action, **detail)

    # -- reads ----------------------------------------------------------------

    def row(self, namespace: str, edit_id: str) -> dict[str, Any]:
        if isinstance(edit_id, str) and unicode_problem(edit_id):
            raise ArgumentError("edit_id", f"{edit_id!r} {unicode_problem(edit_id)}")
        rows = self._rows("SELECT * FROM edits WHERE namespace = ? AND id = ?", (namespace, edit_id))
        if not rows:
            raise EditNotFound(edit_id, namespace)
        return rows[0]

    def rows_by_id(self, namespace: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The rows of these edit ids, in the order given (all must exist)."""
        found: dict[str, dict[str, Any]] = {}
        for chunk, marks in _chunks(list(ids)):
            for row in self._rows(f"SELECT * FROM edits WHERE namespace = ? AND id IN ({marks})", (namespace, *chunk)):
                found[row["id"]] = row
        return [found[i] for i in ids]

    def status(self, namespace: str, edit_id: str) -> str | None:
        """The status of this edit in this namespace, or None if there is no such edit."""
        row = self.conn.execute("SELECT status FROM edits WHERE namespace = ? AND id = ?", (namespace, edit_id)).fetchone()
        return None if row is None else row[0]

    def active_row_by_key(self, namespace: str, key: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM edits WHERE namespace = ? AND key = ? AND status = 'active'", (namespace, key))
        return rows[0] if rows else None

    def rows_by_rid(self, namespace: str, rids: Sequence[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for chunk, marks in _chunks([int(r) for r in rids]):
            # "+namespace" keeps SQLite on the primary key; with the namespace index it would
            # scan every edit of the namespace (14 ms a search at 100,000 edits).
            for row in self._rows(f"SELECT * FROM edits WHERE rid IN ({marks}) AND +namespace = ?", (*chunk, namespace)):
                out[row["rid"]] = row
        return out

    def list_rows(self, namespace: str, status: str | None = "active", kind: str | None = None,
                  subject: str | None = None, source: str | None = None,
                  limit: int | None = None, offset: int = 0, id_prefix: str | None = None) -> list[dict[str, Any]]:
        where, params = ["namespace = ?"], [namespace]
        if id_prefix is not None:  # a range on (namespace, id), so the unique index serves it
            where.append("id >= ? AND id < ?")
            params += [id_prefix, id_prefix[:-1] + chr(ord(id_prefix[-1]) + 1)]
        for column, value in (("status", status), ("kind", kind), ("source", source)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if subject is not None:
            where.append("subject = ? COLLATE NOCASE")
            params.append(subject)
        sql = f"SELECT * FROM edits WHERE {' AND '.join(where)} ORDER BY rid LIMIT ? OFFSET ?"
        return self._rows(sql, (*params, -1 if limit is None else limit, offset))

    def namespaces(self) -> list[str]:
        """The namespaces that hold active or consolidated edits, sorted."""
        cur = self.conn.execute("SELECT DISTINCT namespace FROM edits WHERE status IN ('active', 'consolidated') ORDER BY namespace")
        return [row[0] for row in cur]

    def active_rids(self, namespace: str) -> np.ndarray:
        cur = self.conn.execute("SELECT rid FROM edits WHERE namespace = ? AND status = 'active' ORDER BY rid", (namespace,))
        return np.fromiter((r[0] for r in cur), dtype=np.int64)

    def vectors(self, rids: Sequence[int], model: str) -> dict[int, np.ndarray]:
        """Cached vectors of these edits for this embedder model (missing ones are absent)."""
        out: dict[int, np.ndarray] = {}
        for chunk, marks in _chunks([int(r) for r in rids]):
            cur = self.conn.execute(f"SELECT edit_rid, vector FROM embeddings WHERE model = ? AND edit_rid IN ({marks})", (model, *chunk))
            for rid, blob in cur:
                out[rid] = np.frombuffer(blob, dtype=np.float32)
        return out

    def max_seq(self, namespace: str) -> int:
        return self.conn.execute("SELECT coalesce(max(seq), 0) FROM events WHERE namespace = ?", (namespace,)).fetchone()[0]

    def event_mark(self, namespace: str, seq: int) -> str | None:
        """A fingerprint of the namespace's event ``seq`` (None if this log has no such event)."""
        row = self.conn.execute("SELECT edit_id, action, at FROM events WHERE namespace = ? AND seq = ?", (namespace, seq)).fetchone()
        return None if row is None else f"{seq}|{row[0]}|{row[1]}|{row[2]}"

    def events_since(self, namespace: str, seq: int) -> list[tuple[int, int | None, str]]:
        """(seq, edit_rid, action) of the namespace's events after ``seq``, in order."""
        cur = self.conn.execute("SELECT seq, edit_rid, action FROM events WHERE namespace = ? AND seq > ? ORDER BY seq", (namespace, seq))
        return cur.fetchall()

    def history(self, namespace: str, edit_id: str | None = None, limit: int | None = None) -> list[Event]:
        if edit_id is None:
            rows = self._rows("SELECT * FROM events WHERE namespace = ? ORDER BY seq LIMIT ?", (namespace, -1 if limit is None else limit))
        else:
            self.row(namespace, edit_id)  # raises EditNotFound
            rows = self._rows("SELECT * FROM events WHERE namespace = ? AND edit_id = ? ORDER BY seq LIMIT ?",
                              (namespace, edit_id, -1 if limit is None else limit))
        return [Event(r["seq"], r["namespace"], r["edit_id"], r["action"], r["at"], json.loads(r["detail"])) for r in rows]

    def consolidated_batch(self, namespace: str, edit_id: str) -> str | None:
        """The batch that last wrote this edit into the weights (None if none did)."""
        row = self.conn.execute(
            "SELECT json_extract(detail, '$.batch') FROM events WHERE namespace = ? AND edit_id = ? AND action = ? "
            "ORDER BY seq DESC LIMIT 1", (namespace, edit_id, Action.CONSOLIDATE.value)).fetchone()
        return None if row is None else row[0]

    def weight_batches(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's consolidation batches still in force, oldest first: the detail of each
        batch-level ``consolidate`` event (edit_id NULL) not followed by a ``revert`` of it."""
        rows = self.conn.execute(
            "SELECT seq, action, detail FROM events WHERE namespace = ? AND edit_id IS NULL AND action IN (?, ?) "
            "ORDER BY seq", (namespace, Action.CONSOLIDATE.value, Action.REVERT.value)).fetchall()
        live: dict[str, dict[str, Any]] = {}
        for seq, action, detail in rows:
            detail = json.loads(detail)
            if action == Action.CONSOLIDATE:
                live[detail["batch"]] = {**detail, "seq": seq}
            else:
                live.pop(detail["batch"], None)
        return list(live.values())

    def counts(self, namespace: str) -> dict[str, Any]:
        by_status = {s: 0 for s in STATUSES}
        by_kind: dict[str, int] = {}
        with self.snapshot():  # both counts from one committed state, even while another process writes
            rows = self.conn.execute(
                "SELECT status, kind, count(*) FROM edits WHERE namespace = ? GROUP BY status, kind", (namespace,)).fetchall()
            events = self.conn.execute("SELECT count(*) FROM events WHERE namespace = ?", (namespace,)).fetchone()[0]
        for status, kind, n in rows:
            by_status[status] += n
            if status == "active":
                by_kind[kind] = by_kind.get(kind, 0) + n
        return {"edits": sum(by_status.values()), "by_status": by_status, "active_by_kind": by_kind, "events": events}
