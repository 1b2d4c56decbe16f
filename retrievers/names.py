"""The name index: which active edits a question may name, before anything is embedded.

A derived index over one namespace's edits (rebuilt from the memory's event log, never
trusted over it): each triple under the names of its subject, each free-text edit under
its statement's names, by token and by every one-letter deletion of a longer token, so
that a typo still finds it. :class:`memedit.retrievers.detector.ScopeDetector` confirms
each guess by finding the name in the question.
"""

from __future__ import annotations

import threading
from typing import Any

from .entities import TYPO_MIN, fold, name_tokens, statement_names, tokens

# Events that put an edit back on the retrieval path (memedit.storage.Action): the name index then reads
# the active edits again instead of appending.
ON_PATH_AGAIN = ("restore", "revert")


class NameIndex:
    """The active edits of one namespace by their names: a triple by its subject's, a
    free-text edit by its statement's (:func:`statement_names`); a derived index rebuilt
    whenever the memory's event log moves on. A subject's names are itself and the aliases
    of any edit whose target is that subject."""

    def __init__(self) -> None:
        self.revision: int | None = None
        # (edits, names, by_token, active), replaced whole so that a reader in another thread
        # never sees the token map of one revision with the edits of another.
        self._state: tuple[list[Any], dict[str, list[str]], dict[str, set[int]], list[Any]] = ([], {}, {}, [])
        self._lock = threading.Lock()

    def refresh(self, memory: Any) -> list[Any]:
        """Catch up with ``memory``'s event log; the edits that came onto the retrieval path
        since the last call (every active edit the first time), empty if the log has not moved.
        New edits and edits taken off the path are applied from the events since; a restore or
        revert (an older edit back on the path) reads the active edits again, in their order."""
        if memory.revision() == self.revision:
            return []
        with self._lock:  # another thread may have caught up meanwhile: read the revision again
            revision = memory.revision()
            if revision == self.revision:
                return []
            changes = memory.changes_since(self.revision) if self.revision is not None and revision > self.revision else None
            if changes is None or any(action in ON_PATH_AGAIN for action, _ in changes):
                active = fresh = memory.list()
            else:
                gone = {edit.id for _, edit in changes}
                fresh = list({edit.id: edit for action, edit in changes if action == "add" and edit.status == "active"}.values())
                active = [e for e in self._state[3] if e.id not in gone] + fresh
            self._index(active)
            self.revision = revision
        return fresh

    def _index(self, active: list[Any]) -> None:
        edits = [e for e in active if e.subject is not None or statement_names(e.statement)]
        aliases: dict[str, list[str]] = {}
        for e in edits:
            if e.target and e.aliases:
                aliases.setdefault(fold(e.target), []).extend(e.aliases)
        names = {fold(e.subject): list(dict.fromkeys(aliases.get(fold(e.subject), []))) for e in edits if e.subject is not None}
        by_token: dict[str, set[int]] = {}
        for i, e in enumerate(edits):
            for name in [e.subject, *names[fold(e.subject)]] if e.subject is not None else statement_names(e.statement):
                for token in name_tokens(name):
                    for key in _keys(token):
                        by_token.setdefault(key, set()).add(i)
        self._state = (edits, names, by_token, active)

    def named_in(self, question: str, limit: int = 50) -> list[Any]:
        """Active edits whose subject (or one of its names, or a free-text statement's name)
        the question may name: a shared token, or a token one typo away. ``find_mention``
        confirms it later."""
        edits, _, by_token, _ = self._state
        found: dict[int, int] = {}
        for token, _, _ in tokens(question):
            for key in _keys(token):
                for i in by_token.get(key, ()):
                    found[i] = found.get(i, 0) + 1
        ranked = sorted(found, key=lambda i: -found[i])[:limit]
        return [edits[i] for i in ranked]

    @property
    def edits(self) -> list[Any]:
        """The active edits indexed: the triples, and the free-text edits whose statement has a name."""
        return self._state[0]

    @property
    def names(self) -> dict[str, list[str]]:
        """Other names of each folded subject."""
        return self._state[1]

    @property
    def active(self) -> list[Any]:
        """Every active edit at this revision, free-text ones included."""
        return self._state[3]


def _keys(token: str) -> list[str]:
    """The token and, for tokens of ``TYPO_MIN`` letters or more, each one-letter deletion (so
    a typo of one letter still shares a key). Short function words are no key."""
    if len(token) < 2 or token in _COMMON:
        return []
    if len(token) < TYPO_MIN:
        return [token]
    return [token] + [token[:i] + token[i + 1:] for i in range(len(token))]


_COMMON = frozenset("""a an and at by de del der for from in of on or the to van von with is was are were be
what who whom whose which where when why how does did do has have had it its this that these those""".split())
