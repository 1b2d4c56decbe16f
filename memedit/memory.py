"""``Memory``: the Python API over the store, the embedder and the per-namespace indexes."""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

import numpy as np

from .artifacts import Artifacts
from .checks import optional_whole_number, text_argument, whole_number
from .edit import KINDS, Edit, _check_text, new_edit_id, utc_now
from .embeddings import DEFAULT_EMBEDDER, Embedder, get_embedder
from .errors import ArgumentError, ConflictError, EditError, ImportFailed
from .index import HNSW_THRESHOLD, NamespaceIndex, index_folder
from .storage import STATUSES, Action, Event, Storage, StoredEdit, is_postgres, row_to_edit, safe_url
from .store import Store, db_path

DEFAULT_DB = "memedit.db"
DEFAULT_NAMESPACE = "default"
MAX_K = 1_000


def open_store(location: str, artifacts_dir: str | Path | None = None) -> Storage:
    """The store at ``location``: PostgreSQL for a ``postgresql://`` URL, else an SQLite file."""
    if is_postgres(location):
        from .pgstore import PgStore  # psycopg is an optional extra

        return PgStore(location, artifacts_dir=artifacts_dir)
    return Store(location, artifacts_dir=artifacts_dir)


@dataclass(frozen=True)
class Hit:
    """One search result: a stored edit and its cosine similarity to the query."""

    edit: StoredEdit
    score: float


class _Shared:
    """What every namespace view of one database shares: the store, the embedder, the indexes."""

    def __init__(self, path: str, embedder: Embedder | str, hnsw_threshold: int,
                 artifacts_dir: str | Path | None = None) -> None:
        self.path = path
        self.store = open_store(path, artifacts_dir)
        self._embedder = embedder
        self.hnsw_threshold = hnsw_threshold
        self.indexes: dict[str, NamespaceIndex] = {}
        self.artifacts: dict[str, Artifacts] = {}
        # One connection and one set of indexes serve every thread: each use holds this lock.
        self.lock = threading.RLock()

    @property
    def embedder(self) -> Embedder:
        if isinstance(self._embedder, str):
            self._embedder = get_embedder(self._embedder)
        return self._embedder

    @property
    def embedder_name(self) -> str:
        return self._embedder if isinstance(self._embedder, str) else self._embedder.name

    def index(self, namespace: str) -> NamespaceIndex:
        if namespace not in self.indexes:
            embedder, kind, folder = self.embedder, NamespaceIndex, index_folder(self.path)
            if self.store.kind == "postgres":  # the search runs in SQL (pgvector), no index file
                from .pgindex import PgIndex as kind
                folder = None
            self.indexes[namespace] = kind(
                self.store, namespace, embedder.name, embedder.dim,
                vectors=lambda rids: self.vectors(namespace, rids),
                folder=folder, hnsw_threshold=self.hnsw_threshold)
        return self.indexes[namespace]

    def artifacts_of(self, namespace: str) -> Artifacts:
        if namespace not in self.artifacts:
            self.artifacts[namespace] = Artifacts(self.store, namespace, lock=self.lock)
        return self.artifacts[namespace]

    def vectors(self, namespace: str, rids: Any) -> np.ndarray:
        """Cached vectors of these edits; any not cached for this embedder are embedded now."""
        cached = self.store.vectors(rids, self.embedder.name)
        missing = [int(r) for r in rids if int(r) not in cached]
        if missing:
            rows = self.store.rows_by_rid(namespace, missing)
            fresh = self.embedder.encode([rows[r]["statement"] for r in missing])
            cached.update(zip(missing, fresh))
        return np.stack([cached[int(r)] for r in rids]) if len(rids) else np.zeros((0, self.embedder.dim), np.float32)

    def close(self) -> None:
        for index in self.indexes.values():
            index.save()
        self.store.close()


def _locked(method):
    """Run a Memory method while holding its database's lock (safe to share across threads)."""
    @functools.wraps(method)
    def wrapper(self: "Memory", *args: Any, **kwargs: Any) -> Any:
        with self._shared.lock:
            return method(self, *args, **kwargs)
    return wrapper


class Memory:
    """A durable memory of edits, scoped to one namespace.

    >>> memory = Memory("memedit.db", namespace="alice")
    >>> memory.add(subject="France", prompt="The capital of {} is", target="Lyon", old_target="Paris")
    >>> memory.search("What is the capital of France?", k=3)

    ``path`` is an SQLite file or a ``postgresql://`` URL (the same API on both; for
    PostgreSQL, artifacts such as GRACE codebooks go in ``artifacts_dir`` or
    ``$MEMEDIT_ARTIFACTS``). ``with_namespace(name)`` gives a view of another namespace
    over the same database.
    Call ``close()`` (or use ``with``) to save the search indexes; if a process ends
    without it, the next open catches the index up from the event log.

    The memory owns every edit's status and the events that record each change (adding,
    superseding, retracting, restoring, and marking edits consolidated into a model's
    weights or back). The weights themselves belong to ``weight_editors``.
    """

    #: The weight editors behind ``consolidate``, ``revert`` and ``apply_consolidated``:
    #: ``memedit.param_editors``, plugged in by the package (``memedit/__init__.py``), so
    #: this module does not import them.
    weight_editors: Any = None

    def __init__(self, path: str | Path = DEFAULT_DB, namespace: str = DEFAULT_NAMESPACE,
                 embedder: Embedder | str = DEFAULT_EMBEDDER, hnsw_threshold: int = HNSW_THRESHOLD,
                 artifacts_dir: str | Path | None = None, _shared: _Shared | None = None) -> None:
        self.namespace = check_namespace(namespace)
        self._shared = _shared or _Shared(db_path(path), embedder, hnsw_threshold, artifacts_dir)
        self._store: Storage = self._shared.store
        self.path = self._shared.path

    def with_namespace(self, namespace: str) -> "Memory":
        """A view of ``namespace`` in the same database (sharing its connection and embedder)."""
        return Memory(namespace=namespace, _shared=self._shared)

    @property
    def embedder(self) -> Embedder:
        """The sentence embedder of this database (loaded on first use)."""
        return self._shared.embedder

    @property
    def lock(self) -> threading.RLock:
        """The lock every use of this database holds (one per database, re-entrant): hold it
        to make several calls one step for the other threads."""
        return self._shared.lock

    @property
    def artifacts(self) -> Artifacts:
        """This namespace's artifacts (named tensor files in the store's artifacts folder)."""
        return self._shared.artifacts_of(self.namespace)

    @property
    def index(self) -> NamespaceIndex:
        """This namespace's search index (opened, checked and caught up on first use)."""
        return self._shared.index(self.namespace)

    # -- writing ------------------------------------------------------------------

    def add(self, edit: Edit | dict[str, Any] | None = None, **fields: Any) -> StoredEdit:
        """Store one edit, given as an ``Edit``, a dict, or keyword fields. Returns it as stored."""
        if edit is None:
            edit = Edit(**fields)
        elif fields:
            raise ArgumentError("edit", "and keyword fields were both given; pass either an edit or keyword fields, not both")
        return self.add_many([edit])[0]

    def add_many(self, edits: Iterable[Edit | dict[str, Any]], progress: bool = False) -> list[StoredEdit]:
        """Store many edits in one transaction (all or none), embedding them in batches."""
        if isinstance(edits, (str, bytes, dict, Edit)) or not hasattr(edits, "__iter__"):
            raise ArgumentError("edits", f"must be a list of edits (Edit objects or dicts), got {type(edits).__name__}")
        return self._write_all([(self._prepare(e), "active") for e in edits], via="add", progress=progress)

    def retract(self, edit_id: str, reason: str | None = None) -> StoredEdit:
        """Take an edit off the memory. If it had superseded an edit, that one becomes active again."""
        return self.retract_many([edit_id], reason)[0]

    @_locked
    def retract_many(self, edit_ids: Iterable[str], reason: str | None = None) -> list[StoredEdit]:
        """Retract several edits in one transaction (all or none), in the order given; each
        one restores the edit it had superseded, as ``retract`` does."""
        edit_ids = list(edit_ids)
        reason = _check_text("reason", reason, 1_000)
        with self._store.write():
            for edit_id in edit_ids:
                self._retract(edit_id, reason)
        self.index.sync()
        return [self.get(edit_id) for edit_id in edit_ids]

    def _prepare(self, edit: Edit | dict[str, Any]) -> Edit:
        if isinstance(edit, dict):
            edit = Edit.from_dict(edit)
        elif not isinstance(edit, Edit):
            raise ArgumentError("edit", f"must be an Edit or a dict of edit fields, got {type(edit).__name__}")
        if edit.namespace is not None and edit.namespace != self.namespace:
            raise EditError("namespace", f"is {edit.namespace!r} but this memory is scoped to {self.namespace!r}; "
                                         f"use memory.with_namespace({edit.namespace!r}) or leave namespace out")
        return edit.replace(namespace=self.namespace, id=edit.id or new_edit_id(), created_at=edit.created_at or utc_now())

    def _write_all(self, items: list[tuple[Edit, str]], via: str, progress: bool) -> list[StoredEdit]:
        seen: set[str] = set()
        for edit, _ in items:
            if edit.id in seen:
                raise ConflictError(f"id {edit.id!r} appears twice in this batch; give each edit its own id or leave id out")
            seen.add(edit.id)
        embedder = self._shared.embedder
        vectors = embedder.encode([e.statement for e, _ in items], progress=progress)
        # An edit imported as retracted may have been superseded by a later line before it
        # was retracted; retract it once the lines that supersede it are in, not before.
        due = {edit.id: i for i, (edit, status) in enumerate(items) if status == "retracted"}
        for j, (edit, _) in enumerate(items):
            if edit.supersedes in due:
                due[edit.supersedes] = max(due[edit.supersedes], j)
        retract_after: dict[int, list[str]] = {}
        for edit_id, j in due.items():
            retract_after.setdefault(j, []).append(edit_id)
        with self._shared.lock:
            with self._store.write():
                for j, ((edit, _), vector) in enumerate(zip(items, vectors)):
                    self._write_one(edit, vector, via)
                    for edit_id in retract_after.get(j, ()):
                        self._retract(edit_id, "imported as retracted")
            index = self.index
            index.sync()
            if len(items) >= 100:
                index.save()
            return [row_to_edit(row) for row in self._store.rows_by_id(self.namespace, [e.id for e, _ in items])]

    def _write_one(self, edit: Edit, vector: np.ndarray, via: str) -> None:
        store, ns = self._store, self.namespace
        replaced = {}
        if edit.supersedes is not None:
            row = store.row(ns, edit.supersedes)
            if row["status"] != "active":
                raise ConflictError(f"edit {edit.id!r} supersedes {edit.supersedes!r}, which is already {row['status']}; "
                                    f"supersede the active edit instead")
            replaced[row["rid"]] = row
        if edit.key is not None and (row := store.active_row_by_key(ns, edit.key)) is not None:
            replaced[row["rid"]] = row
            if edit.supersedes is None:
                edit = edit.replace(supersedes=row["id"])
        rid = store.insert_edit(edit)
        store.put_vector(rid, self._shared.embedder.name, vector)
        store.log(ns, edit.id, rid, Action.ADD, via=via, supersedes=[r["id"] for r in replaced.values()])
        for row in replaced.values():
            store.set_status(row, "superseded", Action.SUPERSEDE, edit.id, by=edit.id)

    def _retract(self, edit_id: str, reason: str | None) -> None:
        store, ns = self._store, self.namespace
        row = store.row(ns, edit_id)
        if row["status"] == "retracted":
            raise ConflictError(f"edit {edit_id!r} in namespace {ns!r} is already retracted")
        if row["status"] == "consolidated":
            batch = store.consolidated_batch(ns, edit_id)
            raise ConflictError(f"edit {edit_id!r} in namespace {ns!r} is written into the model's weights (batch {batch!r}); "
                                f"revert that batch first (memory.revert({batch!r}) or memedit consolidate --revert {batch}), then retract it")
        store.set_status(row, "retracted", Action.RETRACT, row["superseded_by"], reason=reason, was=row["status"])
        if row["status"] != "active" or row["supersedes"] is None:
            return
        try:
            previous = store.row(ns, row["supersedes"])
        except LookupError:
            return
        if previous["status"] == "superseded" and previous["superseded_by"] == edit_id:
            self._back_on_path(previous, Action.RESTORE, after_retract_of=edit_id)

    def _back_on_path(self, row: dict[str, Any], action: Action, **detail: Any) -> None:
        """The one rule for an edit that returns (its superseder retracted, or its consolidation
        batch reverted): it is active again (``action``) unless an active edit now holds its
        key; then it is superseded by that one."""
        store, ns = self._store, self.namespace
        holder = store.active_row_by_key(ns, row["key"]) if row["key"] is not None else None
        if holder is None:
            store.set_status(row, "active", action, **detail)
        elif row["status"] != "superseded" or row["superseded_by"] != holder["id"]:
            store.set_status(row, "superseded", Action.SUPERSEDE, holder["id"], by=holder["id"], **detail)

    # -- reading -----------------------------------------------------------------

    @_locked
    def get(self, edit_id: str) -> StoredEdit:
        """The edit with this id in this namespace (any status); EditNotFound otherwise."""
        return row_to_edit(self._store.row(self.namespace, edit_id))

    @_locked
    def list(self, status: str | None = "active", kind: str | None = None, subject: str | None = None,
             source: str | None = None, limit: int | None = None, offset: int = 0,
             id_prefix: str | None = None) -> list[StoredEdit]:
        """Edits of this namespace in the order they were added. ``status=None`` lists every status;
        ``id_prefix`` keeps the edits whose id starts with it."""
        if status is not None and status not in STATUSES:
            raise ArgumentError("status", f"must be one of {', '.join(STATUSES)} (or None for all); got {status!r}")
        if kind is not None and kind not in KINDS:
            raise ArgumentError("kind", f"must be one of {', '.join(KINDS)} (or None for all); got {kind!r}")
        for name, value in (("subject", subject), ("source", source), ("id_prefix", id_prefix)):
            text_argument(name, value, required=False)
        limit, offset = optional_whole_number("limit", limit), whole_number("offset", offset)
        rows = self._store.list_rows(self.namespace, status, kind, subject, source, limit, offset, id_prefix)
        return [row_to_edit(r) for r in rows]

    @_locked
    def namespaces(self) -> list[str]:
        """The names of the namespaces of this database that hold active or consolidated edits,
        sorted (names only: no edit of another namespace is read)."""
        return self._store.namespaces()

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The ``k`` active edits whose statements are nearest to ``query``, best first."""
        text_argument("query", query)
        return self.search_vector(self._shared.embedder.encode_one(query), k)

    @_locked
    def search_vector(self, vector: np.ndarray, k: int = 5) -> list[Hit]:
        """Like ``search``, for a query already embedded (normalised, embedder's dimension)."""
        whole_number("k", k, 1, MAX_K)
        index = self.index
        index.sync()
        hits = index.search(vector, k)
        rows = self._store.rows_by_rid(self.namespace, [rid for rid, _ in hits])
        return [Hit(row_to_edit(rows[rid]), score) for rid, score in hits
                if rid in rows and rows[rid]["status"] == "active"]

    @_locked
    def statement_vectors(self, edits: Sequence[Edit]) -> dict[str, np.ndarray]:
        """The stored embeddings of these edits' statements (this memory's embedder), by edit
        id; an edit of another namespace, or with no stored vector, is left out."""
        return self._store.vectors_by_id(self.namespace, [e.id for e in edits], self._shared.embedder_name)

    @_locked
    def revision(self) -> int:
        """The number of the namespace's latest event: it changes whenever an edit is added,
        retracted, superseded, restored or consolidated (derived indexes key on it)."""
        return self._store.max_seq(self.namespace)

    @_locked
    def changes_since(self, revision: int) -> list[tuple[str, StoredEdit]]:
        """``(action, the edit as it is now)`` for each event after ``revision`` that names an
        edit, oldest first: what a cache keyed on :meth:`revision` must apply to catch up."""
        whole_number("revision", revision)
        events = [(action, rid) for _, rid, action in self._store.events_since(self.namespace, revision) if rid is not None]
        rows = self._store.rows_by_rid(self.namespace, list(dict.fromkeys(rid for _, rid in events)))
        edits = {rid: row_to_edit(row) for rid, row in rows.items()}
        return [(str(action), edits[rid]) for action, rid in events if rid in edits]

    @_locked
    def history(self, edit_id: str | None = None, limit: int | None = None) -> list[Event]:
        """The event log of one edit, or of the whole namespace, oldest first."""
        return self._store.history(self.namespace, edit_id, optional_whole_number("limit", limit))

    @_locked
    def stats(self) -> dict[str, Any]:
        """Counts of this namespace's edits by status and kind, events, and where things are stored."""
        out = {"namespace": self.namespace, "db": safe_url(self.path), **self._store.counts(self.namespace)}
        loaded = self._shared.indexes.get(self.namespace)
        out["index"] = {"kind": loaded.kind, "size": len(loaded.live)} if loaded else None
        out["embedder"] = self._shared.embedder_name
        return out

    # -- consolidation into a model's weights ------------------------------------

    def consolidate(self, model, method: str = "memit", edits: Iterable[Any] | None = None, verify: bool = True,
                    policy: Any = None, **options: Any):
        """Write active triple edits (all, the given ids, or those ``policy`` chooses) into
        ``model``'s weights with MEMIT or ROME, verify them, and journal the batch; returns a
        ``ConsolidationReport``. Edits that took leave the retrieval path; the rest stay on it.
        ``policy`` is a ``ConsolidationPolicy`` or a dict of its fields (``older_than``,
        ``beyond``, ``batch_size``); one that matches no edit writes nothing and the report
        says so. See ``memedit.param_editors.consolidate`` for the options."""
        if policy is not None:
            if edits is not None:
                raise ArgumentError("policy", "and edits were both given; pass the edits to write, or a policy that "
                                              "chooses them, not both")
            edits = self.weight_editors.select(self, policy)
            if not edits:
                return self.weight_editors.nothing_matched(policy, method)
        return self.weight_editors.consolidate(self, model, method=method, edits=edits, verify=verify, **options)

    def revert(self, batch: str, model=None) -> list[str]:
        """Take consolidation ``batch`` out of force: its edits return to the retrieval path and
        ``model`` (if given) loses its delta, bit for bit. Returns the edit ids."""
        return self.weight_editors.revert(self, batch, model)

    def apply_consolidated(self, model) -> list[str]:
        """Make ``model`` (a freshly loaded base model) carry this namespace's consolidation
        batches; returns their ids. ``EditedModel`` calls this for you."""
        return self.weight_editors.apply_consolidated(self, model)

    @_locked
    def weight_batches(self) -> list[dict[str, Any]]:
        """The consolidation batches in force in this namespace, oldest first."""
        return self._store.weight_batches(self.namespace)

    @_locked
    def mark_consolidated(self, batch: str, edit_ids: Sequence[str],
                          journal: Callable[[list[str]], dict[str, Any]]) -> list[str]:
        """Record consolidation ``batch``: in one transaction, ``journal(ids)`` saves the batch's
        weights for the ids of ``edit_ids`` still active and returns the batch event's detail,
        then those edits become ``consolidated`` (off the retrieval path). Returns those ids."""
        store, ns = self._store, self.namespace
        with store.write():
            # An edit retracted by another writer while the batch was computed is not marked.
            rows = [row for row in store.rows_by_id(ns, edit_ids) if row["status"] == "active"]
            ids = [row["id"] for row in rows]
            detail = journal(ids)
            store.log(ns, None, None, Action.CONSOLIDATE, **{**detail, "batch": batch, "edits": ids})
            for row in rows:
                store.set_status(row, "consolidated", Action.CONSOLIDATE, batch=batch, method=detail.get("method"))
        self.index.sync()
        return ids

    @_locked
    def mark_reverted(self, batch: str) -> tuple[dict[str, Any], list[str]]:
        """Take consolidation ``batch`` out of force in the store: each of its edits returns
        (see ``_back_on_path``) and a batch-level ``revert`` event is logged, in one
        transaction. Returns the batch's record (as ``weight_batches`` gives it) and the ids."""
        store, ns = self._store, self.namespace
        live = {b["batch"]: b for b in store.weight_batches(ns)}
        if batch not in live:
            known = ", ".join(live) or "none"
            raise ConflictError(f"no consolidation batch {batch!r} is in force in namespace {ns!r} (in force: {known}); "
                                f"memedit consolidate --list shows them")
        info = live[batch]
        back = []
        with store.write():
            for row in store.rows_by_id(ns, info["edits"]):
                if row["status"] != "consolidated" or store.consolidated_batch(ns, row["id"]) != batch:
                    continue
                self._back_on_path(row, Action.REVERT, batch=batch)
                back.append(row["id"])
            store.log(ns, None, None, Action.REVERT, batch=batch, edits=back)
        self.index.sync()
        return info, back

    # -- JSONL --------------------------------------------------------------------

    @_locked
    def export_jsonl(self, out: str | Path | TextIO, active_only: bool = False) -> int:
        """Write this namespace's edits as JSONL (oldest first) with their status; returns the count.

        With ``active_only`` only active edits are written, without ``supersedes`` links.
        """
        edits = self.list(status="active" if active_only else None)
        handle, close = (open(out, "w", encoding="utf-8"), True) if isinstance(out, (str, Path)) else (out, False)
        try:
            for edit in edits:
                record = edit.to_dict()
                record.pop("superseded_by")
                if active_only:
                    record["supersedes"] = None
                handle.write(json.dumps({k: v for k, v in record.items() if v not in (None, [])}, ensure_ascii=False) + "\n")
        finally:
            if close:
                handle.close()
        return len(edits)

    def import_jsonl(self, source: str | Path | TextIO, progress: bool = False) -> list[StoredEdit]:
        """Add the edits of a JSONL file (one edit object a line) in one transaction.

        Every line is checked first; if any is bad, nothing is imported and ``ImportFailed``
        lists each bad line and why. Lines keep their ``id`` and ``created_at``; their
        ``namespace`` is ignored (edits go into this memory's namespace); a ``status`` of
        ``retracted`` is kept; a ``consolidated`` edit comes in active, since the file does
        not carry the weights it was written into.
        """
        name = str(source) if isinstance(source, (str, Path)) else getattr(source, "name", "<input>")
        if isinstance(source, (str, Path)):
            try:
                with open(source, encoding="utf-8") as f:
                    lines = f.readlines()
            except (OSError, UnicodeDecodeError) as err:
                raise ImportFailed(name, [(0, f"cannot read the file: {err}")]) from None
        else:
            lines = source.readlines()
        items, errors = self._parse_lines(lines)
        if errors:
            raise ImportFailed(name, errors)
        return self._write_all(items, via="import", progress=progress)

    @_locked
    def _parse_lines(self, lines: list[str]) -> tuple[list[tuple[Edit, str]], list[tuple[int, str]]]:
        items: list[tuple[Edit, str]] = []
        errors: list[tuple[int, str]] = []
        ids: dict[str, int] = {}
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise EditError("(line)", f"must be a JSON object with edit fields, got {type(record).__name__}")
                status = record.pop("status", "active")
                record.pop("superseded_by", None)
                record.pop("namespace", None)
                if status not in STATUSES:
                    raise EditError("status", f"must be one of {', '.join(STATUSES)}; got {status!r}")
                edit = self._prepare(Edit.from_dict(record))
            except json.JSONDecodeError as err:
                errors.append((number, f"not valid JSON ({err.msg} at column {err.colno})"))
                continue
            except RecursionError:
                errors.append((number, "nested too deeply to read (JSON arrays or objects inside each other by the "
                                       "thousand); an edit is one flat object of text fields"))
                continue
            except (EditError, TypeError) as err:
                errors.append((number, str(err)))
                continue
            if edit.id in ids:
                errors.append((number, f"id {edit.id!r} is also on line {ids[edit.id]}; ids must be unique"))
                continue
            problem = self._line_conflict(edit, ids)
            if problem:
                errors.append((number, problem))
                continue
            ids[edit.id] = number
            items.append((edit, "retracted" if status == "retracted" else "active"))
        return items, errors

    def _line_conflict(self, edit: Edit, earlier: dict[str, int]) -> str | None:
        store, ns = self._store, self.namespace
        if store.status(ns, edit.id) is not None:
            return f"id {edit.id!r} already exists in namespace {ns!r}; drop the id field to import it as a new edit"
        if edit.supersedes is not None and edit.supersedes not in earlier:
            status = store.status(ns, edit.supersedes)
            if status is None:
                return (f"supersedes {edit.supersedes!r}, which is neither in namespace {ns!r} nor earlier in the file; "
                        f"remove the field or import that edit first")
            if status != "active":
                return (f"supersedes {edit.supersedes!r}, which is already {status} in namespace {ns!r}; "
                        f"supersede the active edit instead, or remove the field")
        return None

    # -- lifetime ------------------------------------------------------------------

    @_locked
    def close(self) -> None:
        """Save changed indexes and close the database."""
        self._shared.close()

    def __enter__(self) -> "Memory":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Memory({safe_url(self.path)!r}, namespace={self.namespace!r})"


def check_namespace(namespace: Any) -> str:
    """A namespace is non-empty text of at most 200 characters."""
    try:
        return _check_text("namespace", namespace, 200, required=True)
    except EditError as err:
        raise ArgumentError("namespace", str(err).split(": ", 1)[1]) from None
