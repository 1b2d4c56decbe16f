"""The edit descriptor: one change to what a model knows, validated on creation."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .checks import unicode_problem
from .errors import EditError

KINDS = ("insert", "modify", "erase")
MAX_FIELD_CHARS = 1_000
MAX_STATEMENT_CHARS = 2_000
MAX_ALIASES = 50
SHORT_FIELDS = ("namespace", "id", "subject", "relation", "target", "old_target", "prompt", "source", "supersedes")


def new_edit_id() -> str:
    """A fresh random edit id (16 hex digits)."""
    return uuid.uuid4().hex[:16]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _check_text(name: str, value: Any, limit: int, required: bool = False) -> str | None:
    """Return the stripped text, or None when absent; raise EditError when it is not usable."""
    if value is None:
        if required:
            raise EditError(name, "is required")
        return None
    if not isinstance(value, str):
        raise EditError(name, f"must be text, got {type(value).__name__} {value!r}; pass a string")
    text = value.strip()
    if not text:
        raise EditError(name, "is empty; give some text or leave the field out")
    if len(text) > limit:
        raise EditError(name, f"is {len(text):,} characters, over the limit of {limit:,}; shorten it or split it into several edits")
    problem = unicode_problem(text)
    if problem:
        raise EditError(name, problem)
    return text


def fill_prompt(prompt: str, subject: str) -> str:
    """The cloze prompt with its ``{}`` replaced by the subject."""
    return prompt.replace("{}", subject)


@dataclass(frozen=True)
class Edit:
    """One edit: a triple with a cloze prompt, or a free-text statement.

    A triple edit has ``subject`` and ``prompt`` (e.g. ``"The capital of {} is"``) and,
    unless it is an erase, a ``target``. A free-text edit has only ``statement``.
    ``kind`` defaults to ``"modify"`` when ``old_target`` is given, else ``"insert"``.
    ``relation`` defaults to the prompt; a new edit with the same (namespace, subject,
    relation) supersedes the active older one. ``aliases`` are other accepted names of
    the target. ``id``, ``namespace`` and ``created_at`` are filled in by ``Memory.add``.
    """

    subject: str | None = None
    prompt: str | None = None
    target: str | None = None
    kind: str | None = None
    relation: str | None = None
    old_target: str | None = None
    statement: str | None = None
    aliases: tuple[str, ...] = ()
    source: str | None = None
    supersedes: str | None = None
    id: str | None = None
    namespace: str | None = None
    created_at: str | None = None

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        for name in SHORT_FIELDS:
            set_(name, _check_text(name, getattr(self, name), MAX_FIELD_CHARS))
        set_("statement", _check_text("statement", self.statement, MAX_STATEMENT_CHARS))
        set_("aliases", _check_aliases(self.aliases))
        if self.created_at is not None:
            _check_timestamp(self.created_at)

        kind = self.kind
        if kind is None:
            kind = "modify" if self.old_target is not None else "insert"
        if not isinstance(kind, str) or kind not in KINDS:
            raise EditError("kind", f"must be one of {', '.join(KINDS)}; got {kind!r}")
        set_("kind", kind)

        if self.subject is None:
            self._check_free_text()
        else:
            self._check_triple()
        if self.kind == "insert" and self.old_target is not None:
            raise EditError("old_target", "an insert adds a fact the model did not know, so it has no old target; use kind='modify'")
        if self.kind == "erase" and self.target is not None:
            raise EditError("target", "an erase removes a fact and has no new target; leave target out (old_target may name what is erased)")

    def _check_free_text(self) -> None:
        for name in ("prompt", "target", "relation", "old_target"):
            if getattr(self, name) is not None:
                raise EditError("subject", f"is missing but {name} is given; a triple edit needs subject, prompt and target (a free-text edit has only statement)")
        if self.statement is None:
            raise EditError("statement", "is required for a free-text edit; give statement='...', or subject=, prompt= and target= for a triple edit")

    def _check_triple(self) -> None:
        if self.prompt is None:
            raise EditError("prompt", "is required when subject is given; pass a cloze template with {} for the subject, e.g. 'The capital of {} is'")
        if self.prompt.count("{}") != 1:
            raise EditError("prompt", f"must contain {{}} exactly once, where the subject goes (e.g. 'The capital of {{}} is'); got {self.prompt!r}")
        if self.kind != "erase" and self.target is None:
            raise EditError("target", f"is required for a triple edit of kind {self.kind!r}; give the new answer, e.g. target='Paris'")
        if self.relation is None:
            object.__setattr__(self, "relation", self.prompt)
        if self.statement is None:
            statement = derive_statement(self)
            if len(statement) > MAX_STATEMENT_CHARS:
                raise EditError("statement", f"derived from subject, prompt and target is {len(statement):,} characters, over the limit of "
                                             f"{MAX_STATEMENT_CHARS:,}; shorten them or give a shorter statement")
            object.__setattr__(self, "statement", statement)

    @property
    def is_triple(self) -> bool:
        return self.subject is not None

    @property
    def key(self) -> str | None:
        """The supersede key of a triple edit (subject and relation, case-folded); None for free text."""
        if not self.is_triple:
            return None
        return " ".join(self.subject.casefold().split()) + "\x1f" + " ".join(self.relation.casefold().split())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (aliases as a list)."""
        data = dataclasses.asdict(self)
        data["aliases"] = list(self.aliases)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Edit":
        """Build an edit from a mapping; unknown keys are an error that names them."""
        if not isinstance(data, dict):
            raise EditError("(record)", f"must be a JSON object with edit fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise EditError(unknown[0], f"is not an edit field; known fields are {', '.join(sorted(names))}")
        return cls(**data)

    def replace(self, **changes: Any) -> "Edit":
        """A copy with some fields changed (validated again). A statement or relation that
        was derived from the triple is derived anew from the changed triple."""
        if self.is_triple and changes.keys() & {"subject", "prompt", "target", "kind"}:
            if "statement" not in changes and self.statement == derive_statement(self):
                changes["statement"] = None
            if "relation" not in changes and "prompt" in changes and self.relation == self.prompt:
                changes["relation"] = None
        return dataclasses.replace(self, **changes)


def derive_statement(edit: Edit) -> str:
    """One sentence for a triple edit: the filled prompt and the target."""
    filled = fill_prompt(edit.prompt, edit.subject)
    if edit.kind == "erase":
        return f"{filled} [erased]"
    end = "" if edit.target[-1] in ".!?" else "."
    return f"{filled} {edit.target}{end}"


def _check_aliases(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise EditError("aliases", f"must be a list of strings, got {type(value).__name__} {value!r}; wrap a single alias in a list, e.g. ['NYC']")
    if len(value) > MAX_ALIASES:
        raise EditError("aliases", f"has {len(value)} entries, over the limit of {MAX_ALIASES}; keep the most common ones")
    out = []
    for i, alias in enumerate(value):
        text = _check_text(f"aliases[{i}]", alias, MAX_FIELD_CHARS, required=True)
        if text not in out:
            out.append(text)
    return tuple(out)


def _check_timestamp(value: Any) -> None:
    if not isinstance(value, str):
        raise EditError("created_at", f"must be text, an ISO 8601 timestamp such as 2026-01-31T12:00:00+00:00; got {type(value).__name__} {value!r}")
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise EditError("created_at", f"must be an ISO 8601 timestamp such as 2026-01-31T12:00:00+00:00; got {value!r}") from None
