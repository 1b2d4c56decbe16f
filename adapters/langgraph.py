"""The LangGraph store: a ``langgraph.store.base.BaseStore`` over a memedit ``Memory``.

Install with ``pip install "memedit[langgraph]"``. A graph compiled with
``store=MemeditStore(Memory("memedit.db"))`` reaches the memory through ``runtime.store``
(nodes and tools) or ``get_store()``:

- A namespace tuple is one memedit namespace, its labels joined by ``.``:
  ``("users", "alice")`` is ``users.alice`` (LangGraph forbids ``.`` in a label, so the
  mapping goes both ways). A label memedit cannot hold raises :class:`NamespaceLabelError`.
- An item's value is an edit: a triple ``{"subject", "prompt", "target"}`` (with
  ``relation``, ``old_target``, ``kind``, ``aliases``, ``source`` optional) or a statement
  ``{"statement": ...}`` (``text`` is taken for ``statement``). Anything else raises
  :class:`StoreValueError`, naming the field.
- Key ``k`` is held by the edits with ids ``k#1``, ``k#2``...: a put over ``k`` adds the next
  one, superseding the current one (history kept); a delete (a put of ``None``) retracts
  every version of ``k``. A triple with the subject and relation of another key's edit
  supersedes it, as in memedit: that key then reads ``None`` until the newer one is deleted.
  An edit added outside the store (say by ``memedit add``) is read under its id as key
  (an id ending in ``#<number>`` reads as a version of the key before it).
- ``search`` with a query is the memory's search (cosine ``score``); without one, it lists
  edits oldest first. Both cover the namespace and the namespaces below it, take a
  ``filter`` on the edit's fields (``$eq``, ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte``) and
  see active edits only; ``get`` also returns an edit consolidated into the weights.
  ``index`` is ignored (memedit embeds every statement); TTLs are not supported.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from langgraph.store.base import (BaseStore, GetOp, InvalidNamespaceError, Item, ListNamespacesOp, MatchCondition, Op,
                                  PutOp, Result, SearchItem, SearchOp, validate_op_namespace)

from memedit.edit import MAX_FIELD_CHARS, Edit, derive_statement
from memedit.errors import ConflictError, EditError, EditNotFound, MemeditError
from memedit.memory import MAX_K, Memory, check_namespace
from memedit.store import StoredEdit

__all__ = ["MemeditStore", "NamespaceLabelError", "StoreKeyError", "StoreQueryError", "StoreValueError", "to_memedit", "to_langgraph"]

VALUE_FIELDS = ("subject", "prompt", "target", "relation", "old_target", "kind", "statement", "aliases", "source")
STORE_FIELDS = ("id", "namespace", "created_at", "supersedes", "status", "superseded_by")
VALUE_HELP = ("a value is an edit: a triple {'subject': ..., 'prompt': 'a sentence with {} for the subject', "
              "'target': ...} (optional: relation, old_target, kind, aliases, source) or a statement "
              "{'statement': ...} ('text' is taken for 'statement')")
MAX_KEY_CHARS = MAX_FIELD_CHARS - 20  # room for the "#n" of the version ids
_VERSION = re.compile(r"(.*)#([1-9][0-9]*)", re.S)
_OPERATORS = {"$eq": lambda a, b: a == b, "$ne": lambda a, b: a != b, "$gt": lambda a, b: a > b,
              "$gte": lambda a, b: a >= b, "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b}


class NamespaceLabelError(MemeditError, InvalidNamespaceError):
    """A namespace tuple that memedit cannot hold as a namespace name."""


class StoreKeyError(MemeditError, ValueError):
    """An item key that cannot name an edit."""


class StoreQueryError(MemeditError, ValueError):
    """A search or list_namespaces argument the store cannot take (query, filter, limit...)."""


class StoreValueError(MemeditError, ValueError):
    """A put's value is not an edit. ``field`` names the offending field."""

    def __init__(self, key: str, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"value of key {key!r}: {field}: {message}; {VALUE_HELP}")


# -- namespaces and keys -------------------------------------------------------------------
def to_memedit(namespace: tuple[str, ...]) -> str:
    """The memedit namespace of a LangGraph namespace tuple: its labels joined by ``.``."""
    validate_op_namespace(GetOp(tuple(namespace), ""))
    if not namespace:
        raise NamespaceLabelError("the namespace is empty; give at least one label, e.g. ('users', 'alice')")
    name = ".".join(namespace)
    try:
        checked = check_namespace(name)
    except ValueError as err:
        raise NamespaceLabelError(f"namespace {namespace!r} cannot be a memedit namespace: {err}") from None
    if checked != name:
        raise NamespaceLabelError(f"namespace {namespace!r}: the first and last labels must not begin or end with "
                                  f"white space (memedit strips it); remove it")
    return name


def to_langgraph(name: str) -> tuple[str, ...] | None:
    """The namespace tuple of a memedit namespace, or None when it has none (an empty label)."""
    labels = tuple(name.split("."))
    return labels if all(labels) else None


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key or key != key.strip():
        raise StoreKeyError(f"key must be non-empty text without white space at either end, got {key!r}")
    if len(key) > MAX_KEY_CHARS or "\x00" in key:
        raise StoreKeyError(f"key {key[:40]!r}... must be at most {MAX_KEY_CHARS} characters with no NUL; shorten it")
    return key


def key_of(edit_id: str) -> str:
    """The store key of an edit: ``k`` for version ids ``k#1``, ``k#2``...; the id itself otherwise."""
    match = _VERSION.fullmatch(edit_id)
    return match.group(1) if match else edit_id


# -- values --------------------------------------------------------------------------------
def to_edit(key: str, value: Any) -> Edit:
    """The edit a put's value describes; StoreValueError naming the field otherwise."""
    if not isinstance(value, Mapping):
        raise StoreValueError(key, "(value)", f"must be a dict, got {type(value).__name__}")
    fields = dict(value)
    if "text" in fields:
        if "statement" in fields:
            raise StoreValueError(key, "text", "is given with statement; give one of them")
        fields["statement"] = fields.pop("text")
    for name in fields:
        if name in STORE_FIELDS:
            raise StoreValueError(key, name, "is set by the store; leave it out")
        if name not in VALUE_FIELDS:
            raise StoreValueError(key, name, "is not an edit field")
    if not {"subject", "statement"} & fields.keys():
        raise StoreValueError(key, "statement", f"is missing (the value has {', '.join(map(repr, fields)) or 'no fields'})")
    try:
        return Edit(**fields)
    except EditError as err:
        raise StoreValueError(key, err.field, str(err).split(": ", 1)[1]) from None


def to_value(edit: Edit) -> dict[str, Any]:
    """An edit as an item value: the fields that were put, without those derived from them
    (so the value can be changed and put back)."""
    value = {name: getattr(edit, name) for name in VALUE_FIELDS}
    value["aliases"] = list(edit.aliases)
    if edit.kind == ("modify" if edit.old_target is not None else "insert"):
        del value["kind"]
    if edit.is_triple and edit.statement == derive_statement(edit):
        del value["statement"]
    if edit.relation == edit.prompt:
        del value["relation"]
    return {name: v for name, v in value.items() if v not in (None, [])}


def _fields(edit: Edit) -> dict[str, Any]:
    """Every field a search filter can name: the value and the derived statement, relation, kind."""
    return {**to_value(edit), "statement": edit.statement, "relation": edit.relation, "kind": edit.kind}


def _matches(fields: dict[str, Any], filter: dict[str, Any] | None) -> bool:
    for name, wanted in (filter or {}).items():
        have = fields.get(name)
        tests = wanted.items() if isinstance(wanted, dict) else [("$eq", wanted)]
        for operator, operand in tests:
            if operator not in _OPERATORS:
                raise StoreQueryError(f"filter {name!r}: unknown operator {operator!r}; use one of {', '.join(_OPERATORS)}")
            try:
                if not _OPERATORS[operator](have, operand):
                    return False
            except TypeError:  # None or a list against a number: no match, as in LangGraph's stores
                return False
    return True


def _match(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    part = namespace[:len(path)] if condition.match_type == "prefix" else namespace[len(namespace) - len(path):]
    return all(p in ("*", n) for p, n in zip(path, part))


def _check_counts(what: str, **counts: Any) -> None:
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StoreQueryError(f"{what} {name} must be a whole number of 0 or more, got {value!r}")


# -- the store -----------------------------------------------------------------------------
class MemeditStore(BaseStore):
    """A LangGraph ``BaseStore`` over ``memory``'s database (see the module's docstring).

    >>> store = MemeditStore(Memory("memedit.db"))
    >>> store.put(("users", "alice"), "capital", {"subject": "France", "prompt": "The capital of {} is", "target": "Lyon"})
    >>> store.search(("users", "alice"), query="capital of France")
    """

    __slots__ = ("memory", "_lock")

    def __init__(self, memory: Memory) -> None:
        if not isinstance(memory, Memory):
            raise TypeError(f"memory must be a memedit.Memory (e.g. Memory('memedit.db')), got {type(memory).__name__}")
        self.memory = memory
        self._lock = threading.RLock()  # a put reads the key's versions, then writes the next one

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run the ops in order. Every op is checked first, so a bad one writes nothing;
        each put or delete is one transaction."""
        ops = list(ops)
        plans = [self._check(op) for op in ops]
        with self._lock:
            return [run() for run in plans]

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """``batch`` in a worker thread (memedit's store is synchronous)."""
        return await asyncio.to_thread(self.batch, list(ops))

    def _check(self, op: Op):
        """Validate one op and return the call that runs it."""
        validate_op_namespace(op)
        if isinstance(op, GetOp):
            memory, key = self._memory(op.namespace), _check_key(op.key)
            return lambda: self._get(memory, key)
        if isinstance(op, PutOp):
            memory, key = self._memory(op.namespace), _check_key(op.key)
            if op.ttl is not None:
                raise NotImplementedError("MemeditStore does not support TTLs; put without ttl")
            if op.value is None:
                return lambda: self._delete(memory, key)
            edit = to_edit(key, op.value)
            return lambda: self._put(memory, key, edit)
        if isinstance(op, SearchOp):
            prefix = tuple(op.namespace_prefix)
            if prefix:
                to_memedit(prefix)
            _check_counts("search", limit=op.limit, offset=op.offset)
            if op.query is not None and (not isinstance(op.query, str) or not op.query.strip()):
                raise StoreQueryError(f"search query must be non-empty text or None, got {op.query!r}")
            return lambda: self._search(op, prefix)
        if isinstance(op, ListNamespacesOp):
            _check_counts("list_namespaces", limit=op.limit, offset=op.offset,
                          **({} if op.max_depth is None else {"max_depth": op.max_depth}))
            return lambda: self._list_namespaces(op)
        raise TypeError(f"unknown store operation {type(op).__name__}; expected GetOp, PutOp, SearchOp or ListNamespacesOp")

    def _memory(self, namespace: tuple[str, ...]) -> Memory:
        return self.memory.with_namespace(to_memedit(tuple(namespace)))

    # -- keys and their versions ----------------------------------------------------------
    @staticmethod
    def _versions(memory: Memory, key: str) -> list[StoredEdit]:
        """Every edit held under ``key``, oldest first: its versions and an edit whose id is the key."""
        versions = [e for e in memory.list(status=None, id_prefix=key + "#") if key_of(e.id) == key]
        if key_of(key) == key:
            try:
                versions.insert(0, memory.get(key))
            except EditNotFound:
                pass
        return versions

    @staticmethod
    def _current(versions: list[StoredEdit]) -> StoredEdit | None:
        live = [e for e in versions if e.status in ("active", "consolidated")]
        return live[-1] if live else None

    def _item(self, memory: Memory, edit: StoredEdit, versions: list[StoredEdit] | None = None,
              search: bool = False, score: float | None = None) -> Item:
        key = key_of(edit.id)
        if versions is None:
            versions = self._versions(memory, key)
        by_id, first = {e.id: e for e in versions}, edit
        while first.supersedes in by_id:  # back to the first version of this run of puts
            first = by_id[first.supersedes]
        fields = dict(namespace=to_langgraph(memory.namespace), key=key, value=to_value(edit),
                      created_at=datetime.fromisoformat(first.created_at), updated_at=datetime.fromisoformat(edit.created_at))
        return SearchItem(**fields, score=score) if search else Item(**fields)

    def _get(self, memory: Memory, key: str) -> Item | None:
        versions = self._versions(memory, key)
        current = self._current(versions)
        return None if current is None else self._item(memory, current, versions)

    def _put(self, memory: Memory, key: str, edit: Edit) -> None:
        versions = self._versions(memory, key)
        current = self._current(versions)
        if current is not None and current.status == "consolidated":
            raise ConflictError(f"key {key!r} in namespace {memory.namespace!r} is edit {current.id!r}, written into the "
                                f"model's weights; revert its consolidation batch first, then put over it")
        number = 1 + max((int(m.group(2)) for e in versions if (m := _VERSION.fullmatch(e.id))), default=0)
        memory.add(edit.replace(id=f"{key}#{number}", supersedes=current.id if current else None))

    def _delete(self, memory: Memory, key: str) -> None:
        live = [e.id for e in self._versions(memory, key) if e.status != "retracted"]
        if live:  # newest first: each retraction restores the one before, which is retracted next
            memory.retract_many(reversed(live), reason="deleted through the LangGraph store")

    # -- search and namespaces --------------------------------------------------------------
    def _names(self, prefix: tuple[str, ...]) -> list[str]:
        """The memedit namespaces at or below ``prefix`` that hold edits."""
        return [name for name in self.memory.namespaces()
                if (labels := to_langgraph(name)) is not None and labels[:len(prefix)] == prefix]

    def _search(self, op: SearchOp, prefix: tuple[str, ...]) -> list[SearchItem]:
        memories = [self.memory.with_namespace(name) for name in self._names(prefix)]
        want = op.offset + op.limit
        if op.query is None:
            found = [(m, e, None) for m in memories for e in m.list(status="active") if _matches(_fields(e), op.filter)]
        else:
            vector, k = self.memory.embedder.encode_one(op.query), min(MAX_K, want if not op.filter else MAX_K)
            hits = [(m, h.edit, h.score) for m in memories if k for h in m.search_vector(vector, k)]
            found = sorted((h for h in hits if _matches(_fields(h[1]), op.filter)), key=lambda h: -h[2])
        return [self._item(m, e, search=True, score=s) for m, e, s in found[op.offset:want]]

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        found = {labels for name in self.memory.namespaces() if (labels := to_langgraph(name)) is not None
                 and all(_match(c, labels) for c in op.match_conditions or ())}
        if op.max_depth is not None:
            found = {labels[:op.max_depth] for labels in found}
        return sorted(found)[op.offset:op.offset + op.limit]
