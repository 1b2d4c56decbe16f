"""The storage interface ``Memory`` talks to, with the SQL both backends share.

``Storage`` names everything the memory, its indexes and its artifacts ask of a store:
transactions (``write``, ``snapshot``), the writes (edits, events, vectors, artifact rows)
and the reads. The queries are written once here, with ``?`` placeholders; a backend
gives the primitives (``_rows``, ``_all``, ``_one``, ``_exec``, ``_insert``), its
transactions and the few differences of its dialect (class attributes below).
``memedit.store.Store`` is SQLite (the embedded default), ``memedit.pgstore.PgStore``
PostgreSQL + pgvector; ``memedit.memory.open_store`` picks one from the location given
(this module imports neither).
Every query takes the namespace; nothing reads across namespaces except ``namespaces()``.
"""

from __future__ import annotations

import json
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .checks import unicode_problem
from .edit import Edit, utc_now
from .errors import ArgumentError, ConflictError, EditNotFound

STATUSES = ("active", "superseded", "retracted", "consolidated")
EDIT_COLUMNS = ("id", "namespace", "kind", "subject", "relation", "target", "old_target", "prompt",
                "statement", "aliases", "source", "supersedes", "created_at")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

EDITS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    rid {rid},
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

SCHEMA_TEMPLATE = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
{edits_table}{edit_indexes}CREATE TABLE IF NOT EXISTS events (
    seq {seq},
    namespace TEXT NOT NULL,
    edit_id TEXT,
    edit_rid {integer},
    action TEXT NOT NULL,
    at TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_by_namespace ON events (namespace, seq);
CREATE INDEX IF NOT EXISTS events_by_edit ON events (namespace, edit_id, seq);
CREATE TABLE IF NOT EXISTS embeddings (
    edit_rid {integer} PRIMARY KEY REFERENCES edits (rid),
    model TEXT NOT NULL,
    vector {vector} NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    file TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes {integer} NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    saved_at TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
"""


def edits_table(name: str, rid: str) -> str:
    """The DDL of the edits table under ``name``, with the backend's row-id column type."""
    return EDITS_TABLE.replace("{name}", name).replace("{rid}", rid)


def schema(rid: str, seq: str, integer: str, vector: str) -> str:
    """The whole schema (meta, edits, events, embeddings, artifacts) in a backend's column types."""
    return (SCHEMA_TEMPLATE.replace("{edits_table}", edits_table("edits", rid))
            .replace("{edit_indexes}", "\n".join(EDIT_INDEXES) + "\n")
            .replace("{seq}", seq).replace("{integer}", integer).replace("{vector}", vector))


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


def row_to_edit(row: dict[str, Any]) -> StoredEdit:
    fields = {name: row[name] for name in EDIT_COLUMNS}
    fields["aliases"] = tuple(json.loads(row["aliases"]))
    return StoredEdit(**fields, status=row["status"], superseded_by=row["superseded_by"])


def is_postgres(location: Any) -> bool:
    """Whether a database location is a PostgreSQL URL (``postgresql://...``)."""
    return isinstance(location, str) and location.lower().startswith(POSTGRES_SCHEMES)


def safe_url(location: str) -> str:
    """A database location fit to show: a URL's password (if any) replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", location)


def _chunks(values: list[Any], size: int = 500) -> Iterator[tuple[list[Any], str]]:
    """Slices of ``values`` small enough for one SQL ``IN (...)``, with their placeholders."""
    for start in range(0, len(values), size):
        chunk = values[start:start + size]
        yield chunk, ",".join("?" * len(chunk))


class Storage:
    """Edits, the append-only event log, cached embeddings and artifact references.

    A backend implements the abstract methods at the end; everything else is shared.
    """

    kind = "?"
    path: str
    #: The exception a backend raises for a duplicate (namespace, id).
    duplicate_error: type[Exception] = Exception
    #: "LIMIT ?" value meaning no limit, the namespace term that keeps a lookup by rid on the
    #: primary key, and how to compare subjects without case.
    no_limit: Any = None
    rid_namespace = "namespace"
    subject_nocase = "lower(subject) = lower(?)"

    # -- writes (call inside write()) ----------------------------------------

    def log(self, namespace: str, edit_id: str | None, rid: int | None, action: Action, **detail: Any) -> int:
        return self._insert(
            "INSERT INTO events (namespace, edit_id, edit_rid, action, at, detail) VALUES (?, ?, ?, ?, ?, ?) RETURNING seq",
            (namespace, edit_id, rid, Action(action).value, utc_now(), json.dumps(detail, ensure_ascii=False)))

    def insert_edit(self, edit: Edit, status: str = "active") -> int:
        values = [getattr(edit, name) for name in EDIT_COLUMNS]
        values[EDIT_COLUMNS.index("aliases")] = json.dumps(list(edit.aliases), ensure_ascii=False)
        try:
            return self._insert(
                f"INSERT INTO edits ({', '.join(EDIT_COLUMNS)}, key, status) "
                f"VALUES ({', '.join('?' * (len(EDIT_COLUMNS) + 2))}) RETURNING rid", (*values, edit.key, status))
        except self.duplicate_error:
            raise ConflictError(f"an edit with id {edit.id!r} already exists in namespace {edit.namespace!r}; "
                                f"leave id out to get a new one") from None

    def set_status(self, row: dict[str, Any], status: str, action: Action, superseded_by: str | None = None,
                   **detail: Any) -> None:
        """Give the edit of ``row`` a new status and log the ``action`` event that says why
        (a status never changes without its event)."""
        self._exec("UPDATE edits SET status = ?, superseded_by = ? WHERE rid = ?", (status, superseded_by, row["rid"]))
        self.log(row["namespace"], row["id"], row["rid"], action, **detail)

    def put_artifact(self, namespace: str, name: str, file: str, sha256: str, size: int, meta: str) -> None:
        """Record (or replace) the row of artifact ``name``."""
        self._exec("INSERT INTO artifacts (namespace, name, file, sha256, bytes, meta, saved_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (namespace, name) DO UPDATE SET file = excluded.file, sha256 = excluded.sha256, "
                   "bytes = excluded.bytes, meta = excluded.meta, saved_at = excluded.saved_at",
                   (namespace, name, file, sha256, size, meta, utc_now()))

    def delete_artifact(self, namespace: str, name: str) -> None:
        self._exec("DELETE FROM artifacts WHERE namespace = ? AND name = ?", (namespace, name))

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
        row = self._one("SELECT status FROM edits WHERE namespace = ? AND id = ?", (namespace, edit_id))
        return None if row is None else row[0]

    def active_row_by_key(self, namespace: str, key: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM edits WHERE namespace = ? AND key = ? AND status = 'active'", (namespace, key))
        return rows[0] if rows else None

    def rows_by_rid(self, namespace: str, rids: Sequence[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for chunk, marks in _chunks([int(r) for r in rids]):
            sql = f"SELECT * FROM edits WHERE rid IN ({marks}) AND {self.rid_namespace} = ?"
            for row in self._rows(sql, (*chunk, namespace)):
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
            where.append(self.subject_nocase)
            params.append(subject)
        sql = f"SELECT * FROM edits WHERE {' AND '.join(where)} ORDER BY rid LIMIT ? OFFSET ?"
        return self._rows(sql, (*params, self.no_limit if limit is None else limit, offset))

    def namespaces(self) -> list[str]:
        """The namespaces that hold active or consolidated edits, sorted."""
        rows = self._all("SELECT DISTINCT namespace FROM edits WHERE status IN ('active', 'consolidated') ORDER BY namespace")
        return [row[0] for row in rows]

    def active_rids(self, namespace: str) -> np.ndarray:
        rows = self._all("SELECT rid FROM edits WHERE namespace = ? AND status = 'active' ORDER BY rid", (namespace,))
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def vectors(self, rids: Sequence[int], model: str) -> dict[int, np.ndarray]:
        """Cached vectors of these edits for this embedder model (missing ones are absent)."""
        out: dict[int, np.ndarray] = {}
        for chunk, marks in _chunks([int(r) for r in rids]):
            for rid, value in self._all(f"SELECT edit_rid, vector FROM embeddings WHERE model = ? AND edit_rid IN ({marks})",
                                        (model, *chunk)):
                out[rid] = self._vector_out(value)
        return out

    def vectors_by_id(self, namespace: str, ids: Sequence[str], model: str) -> dict[str, np.ndarray]:
        """Cached vectors of this namespace's edits with these ids, for this embedder model."""
        out: dict[str, np.ndarray] = {}
        for chunk, marks in _chunks(list(ids)):
            sql = (f"SELECT e.id, v.vector FROM edits e JOIN embeddings v ON v.edit_rid = e.rid "
                   f"WHERE e.namespace = ? AND v.model = ? AND e.id IN ({marks})")
            for edit_id, value in self._all(sql, (namespace, model, *chunk)):
                out[edit_id] = self._vector_out(value)
        return out

    def put_vector(self, rid: int, model: str, vector: np.ndarray) -> None:
        self._exec(f"INSERT INTO embeddings (edit_rid, model, vector) VALUES (?, ?, {self.vector_mark}) ON CONFLICT (edit_rid) "
                   "DO UPDATE SET model = excluded.model, vector = excluded.vector",
                   (rid, model, self._vector_in(np.asarray(vector, dtype=np.float32))))

    def max_seq(self, namespace: str) -> int:
        return self._one("SELECT coalesce(max(seq), 0) FROM events WHERE namespace = ?", (namespace,))[0]

    def event_mark(self, namespace: str, seq: int) -> str | None:
        """A fingerprint of the namespace's event ``seq`` (None if this log has no such event)."""
        row = self._one("SELECT edit_id, action, at FROM events WHERE namespace = ? AND seq = ?", (namespace, seq))
        return None if row is None else f"{seq}|{row[0]}|{row[1]}|{row[2]}"

    def events_since(self, namespace: str, seq: int) -> list[tuple[int, int | None, str]]:
        """(seq, edit_rid, action) of the namespace's events after ``seq``, in order."""
        return [tuple(r) for r in self._all("SELECT seq, edit_rid, action FROM events WHERE namespace = ? AND seq > ? "
                                            "ORDER BY seq", (namespace, seq))]

    def history(self, namespace: str, edit_id: str | None = None, limit: int | None = None) -> list[Event]:
        limit = self.no_limit if limit is None else limit
        if edit_id is None:
            rows = self._rows("SELECT * FROM events WHERE namespace = ? ORDER BY seq LIMIT ?", (namespace, limit))
        else:
            self.row(namespace, edit_id)  # raises EditNotFound
            rows = self._rows("SELECT * FROM events WHERE namespace = ? AND edit_id = ? ORDER BY seq LIMIT ?",
                              (namespace, edit_id, limit))
        return [Event(r["seq"], r["namespace"], r["edit_id"], r["action"], r["at"], json.loads(r["detail"])) for r in rows]

    def consolidated_batch(self, namespace: str, edit_id: str) -> str | None:
        """The batch that last wrote this edit into the weights (None if none did)."""
        row = self._one("SELECT detail FROM events WHERE namespace = ? AND edit_id = ? AND action = ? ORDER BY seq DESC LIMIT 1",
                        (namespace, edit_id, Action.CONSOLIDATE.value))
        return None if row is None else json.loads(row[0]).get("batch")

    def weight_batches(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's consolidation batches still in force, oldest first: the detail of each
        batch-level ``consolidate`` event (edit_id NULL) not followed by a ``revert`` of it."""
        rows = self._all("SELECT seq, action, detail FROM events WHERE namespace = ? AND edit_id IS NULL AND action IN (?, ?) "
                         "ORDER BY seq", (namespace, Action.CONSOLIDATE.value, Action.REVERT.value))
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
            rows = self._all("SELECT status, kind, count(*) FROM edits WHERE namespace = ? GROUP BY status, kind", (namespace,))
            events = self._one("SELECT count(*) FROM events WHERE namespace = ?", (namespace,))[0]
        for status, kind, n in rows:
            by_status[status] += n
            if status == "active":
                by_kind[kind] = by_kind.get(kind, 0) + n
        return {"edits": sum(by_status.values()), "by_status": by_status, "active_by_kind": by_kind, "events": events}

    def artifact_row(self, namespace: str, name: str) -> tuple | None:
        """(file, sha256, bytes, meta, saved_at) of artifact ``name``, or None."""
        return self._one("SELECT file, sha256, bytes, meta, saved_at FROM artifacts WHERE namespace = ? AND name = ?",
                         (namespace, name))

    def artifact_names(self, namespace: str) -> list[str]:
        return [r[0] for r in self._all("SELECT name FROM artifacts WHERE namespace = ? ORDER BY name", (namespace,))]

    # -- what a backend implements ----------------------------------------------

    vector_mark = "?"

    def write(self) -> AbstractContextManager[None]:
        """One write transaction that queues behind other writers; a ``write()`` inside
        another joins it (both commit or roll back together)."""
        raise NotImplementedError

    def snapshot(self) -> AbstractContextManager[None]:
        """A read transaction: every query inside sees the same committed state."""
        raise NotImplementedError

    def artifacts_folder(self) -> Path | None:
        """Where artifact files live (None: a temporary folder will do)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        raise NotImplementedError

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = self._all(sql, params)
        return tuple(rows[0]) if rows else None

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        raise NotImplementedError

    def _insert(self, sql: str, params: Sequence[Any]) -> int:
        """Run an ``INSERT ... RETURNING`` of one row; the value it returns."""
        return self._one(sql, params)[0]

    def _vector_in(self, vector: np.ndarray) -> Any:
        raise NotImplementedError

    def _vector_out(self, value: Any) -> np.ndarray:
        raise NotImplementedError
