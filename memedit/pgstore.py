"""The PostgreSQL store: the same edits, event log, vectors and artifact rows as the SQLite
one (the queries of ``memedit.storage``), for many app servers on one database.

Vectors are pgvector columns; the nearest-neighbour search runs in SQL (``memedit.pgindex``).
Every write is one transaction that first takes ``pg_advisory_xact_lock(WRITE_LOCK)``:
writers queue as they do on SQLite's ``BEGIN IMMEDIATE``, so event numbers commit in
order and a reader that has seen event n has seen every event before it. The schema is
created and migrated on first use (``MIGRATIONS``, its version in ``meta``), under
another advisory lock, so that app servers starting together do it once.
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

import numpy as np

from .errors import ArtifactsDirMissing, ExtensionMissing, SchemaTooNew, StoreOpenError, StoreUnreachable
from .storage import Storage, safe_url, schema

try:
    import psycopg
    import psycopg.conninfo
    from psycopg import errors as pg_errors
    from psycopg.rows import dict_row
except ImportError:  # pragma: no cover - the postgres extra is not installed
    psycopg = None

WRITE_LOCK = 0x6D656D65  # "meme": every write transaction holds it
SCHEMA_LOCK = 0x6D656D73  # "mems": creating or migrating the schema
# pgvector's HNSW: m 16 and ef_construction 100 at build, ef_search 128 at query (bench/ingest.py).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 100
EF_SEARCH = 128

# (version, SQL that brings the schema from the version before to it)
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, schema(rid="BIGSERIAL PRIMARY KEY", seq="BIGSERIAL PRIMARY KEY", integer="BIGINT", vector="vector")),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _need_psycopg() -> None:
    if psycopg is None or importlib.util.find_spec("pgvector") is None:
        raise StoreOpenError("a postgresql:// database needs the postgres extra: pip install 'memedit[postgres]' "
                             "(psycopg and pgvector)")


def check_url(url: str) -> None:
    """StoreOpenError unless ``url`` parses as a PostgreSQL URL (before any connection is tried)."""
    try:
        port = urlsplit(url).port  # ValueError for a port that is not a number from 0 to 65535
        psycopg.conninfo.conninfo_to_dict(url)
        problem = None if port is None or port > 0 else "port 0"
    except (ValueError, psycopg.ProgrammingError) as err:
        problem = " ".join(str(err).split())
    if problem:
        raise StoreOpenError(f"{safe_url(url)!r} is not a valid PostgreSQL URL ({problem}); write it as "
                             f"postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")


def connect(url: str, timeout: float = 10.0):
    """A psycopg connection (autocommit: transactions are explicit) or a named MemeditError."""
    _need_psycopg()
    check_url(url)
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout)), prepare_threshold=None)
    except psycopg.OperationalError as err:
        reason = " ".join(str(err).split())
        raise StoreUnreachable(f"cannot connect to the PostgreSQL database {safe_url(url)!r} ({reason}); check that the "
                               f"server is running and that host, port, user, password and database name are right "
                               f"(for a local test server: scripts/postgres.sh start)") from None


class PgStore(Storage):
    """Edits, events and vectors in one PostgreSQL database (pgvector)."""

    kind = "postgres"
    vector_mark = "?::vector"

    def __init__(self, url: str, artifacts_dir: str | Path | None = None, timeout: float = 10.0) -> None:
        self.path = url
        self.duplicate_error = pg_errors.UniqueViolation if psycopg else Exception
        self._artifacts_dir = artifacts_dir if artifacts_dir is not None else os.environ.get("MEMEDIT_ARTIFACTS") or None
        self._writing = False
        self.conn = connect(url, timeout)
        try:
            self._migrate()
            from pgvector.psycopg import register_vector

            register_vector(self.conn)
            self.conn.execute(f"SET hnsw.ef_search = {EF_SEARCH}")
        except BaseException:
            self.conn.close()
            raise

    # -- schema ------------------------------------------------------------------

    def _migrate(self) -> None:
        """Create the schema, or bring it to ``SCHEMA_VERSION``, in one transaction."""
        where = safe_url(self.path)
        with self._transaction(SCHEMA_LOCK):
            if self._one("SELECT 1 FROM pg_extension WHERE extname = 'vector'") is None:
                try:
                    self.conn.execute("CREATE EXTENSION vector")
                except (pg_errors.InsufficientPrivilege, pg_errors.FeatureNotSupported, pg_errors.UndefinedFile) as err:
                    raise ExtensionMissing(
                        f"the PostgreSQL database {where!r} has no pgvector extension and this user cannot add it "
                        f"({' '.join(str(err).split())}); as a superuser run CREATE EXTENSION vector; in that database "
                        f"(after installing pgvector on the server), then open it again") from None
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = self._one("SELECT value FROM meta WHERE key = 'schema_version'")
            version = 0 if row is None else int(row[0]) if str(row[0]).isdigit() else None
            if version is None:
                raise StoreOpenError(f"{where}: the schema version in its meta table is {row[0]!r}, not a whole number; "
                                     f"it was changed by hand. Set it back (UPDATE meta SET value = '{SCHEMA_VERSION}' "
                                     f"WHERE key = 'schema_version') or use another database")
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(f"{where} was written by a newer memedit (schema {version}, this one knows "
                                   f"{SCHEMA_VERSION}); upgrade memedit to open it")
            for number, sql in MIGRATIONS:
                if number > version:
                    self.conn.execute(sql)
            if version < SCHEMA_VERSION:
                self._exec("INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                           "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))

    def ensure_hnsw(self, dim: int) -> None:
        """The HNSW index over the vectors of this dimension (inner product; built once)."""
        name = f"embeddings_hnsw_{int(dim)}"
        if self._one("SELECT 1 FROM pg_indexes WHERE indexname = ?", (name,)) is None:
            with self.write():
                self.conn.execute("SET LOCAL maintenance_work_mem = '1GB'")  # build the graph in memory
                self.conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON embeddings USING hnsw "
                                  f"((vector::vector({int(dim)})) vector_ip_ops) "
                                  f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) "
                                  f"WHERE vector_dims(vector) = {int(dim)}")

    def rids_without_vector(self, namespace: str, model: str) -> list[int]:
        """Active edits of the namespace that have no vector for this embedder."""
        return [r[0] for r in self._all(
            "SELECT d.rid FROM edits d LEFT JOIN embeddings e ON e.edit_rid = d.rid AND e.model = ? "
            "WHERE d.namespace = ? AND d.status = 'active' AND e.edit_rid IS NULL ORDER BY d.rid", (model, namespace))]

    # -- transactions ------------------------------------------------------------------

    @contextmanager
    def _transaction(self, lock: int | None, read_only: bool = False) -> Iterator[None]:
        self._run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if read_only else "BEGIN")
        try:
            if lock is not None:
                self._run("SELECT pg_advisory_xact_lock(?)", (lock,))
            yield
        except BaseException:
            with suppress(Exception):
                self.conn.execute("ROLLBACK")
            raise
        else:
            self._run("COMMIT")

    @contextmanager
    def write(self) -> Iterator[None]:
        if self._writing:
            yield
            return
        self._writing = True
        try:
            with self._transaction(WRITE_LOCK):
                yield
        finally:
            self._writing = False

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            yield
            return
        with self._transaction(None, read_only=True):
            yield

    def artifacts_folder(self) -> Path:
        if self._artifacts_dir is None:
            raise ArtifactsDirMissing(
                f"artifacts (GRACE codebooks, consolidation deltas) of the PostgreSQL memory {safe_url(self.path)!r} are "
                f"files in a folder every app server shares; name it with Memory(..., artifacts_dir='/shared/memedit') "
                f"or MEMEDIT_ARTIFACTS=/shared/memedit")
        return Path(self._artifacts_dir)

    def close(self) -> None:
        self.conn.close()

    # -- primitives -----------------------------------------------------------------

    def _run(self, sql: str, params: Sequence[Any] = (), rows: bool = False):
        try:
            cur = self.conn.cursor(row_factory=dict_row) if rows else self.conn.cursor()
            return cur.execute(sql.replace("?", "%s"), tuple(params) or None)
        except psycopg.OperationalError as err:
            if isinstance(err, pg_errors.LockNotAvailable):
                raise
            raise StoreUnreachable(f"the PostgreSQL database {safe_url(self.path)!r} stopped answering "
                                   f"({' '.join(str(err).split())}); the transaction was rolled back, nothing of it "
                                   f"was written. Check the server and open the memory again") from None
        except psycopg.InterfaceError as err:
            raise StoreOpenError(f"the PostgreSQL memory {safe_url(self.path)!r} is closed ({err}); "
                                 f"open it again: Memory({safe_url(self.path)!r})") from None

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self._run(sql, params, rows=True).fetchall()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._run(sql, params).fetchall()

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._run(sql, params).rowcount

    def _vector_in(self, vector: np.ndarray) -> Any:
        from pgvector import Vector

        return Vector(vector)

    def _vector_out(self, value: Any) -> np.ndarray:
        return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)
