"""ChatSession: a conversation with an EditedModel, where facts can be taught mid-conversation.

A user message that starts with "remember that ..." (or "from now on, remember that ...",
"please remember: ...", possibly after a short first sentence such as "That is wrong.")
stores the rest as an edit in the session's memory namespace and is acknowledged without
asking the model; every other message is answered through the
router with the edits applied and the conversation so far as history. The bot (the code
around it) teaches facts with :meth:`ChatSession.remember` and erases with :meth:`forget`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from .checks import whole_number
from .edited_model import EditedModel
from .store import StoredEdit

# "remember that ...", "From now on, remember: ...", "No. Please remember that ..."
REMEMBER = re.compile(r"^\s*(?:[^.!?]{0,40}[.!?]\s+)?(?:(?:from now on|please|and)\s*[,:]?\s*)*remember\s*(?:that\b|:)?\s*(?P<fact>.+)$",
                      re.I | re.S)


def remembered_fact(message: str) -> str | None:
    """The fact in a "remember that ..." message, as a sentence; None for any other message."""
    match = REMEMBER.match(message)
    if not match:
        return None
    fact = match.group("fact").strip().rstrip(".!").strip()
    if not re.search(r"\w", fact) or fact.endswith("?"):
        return None
    return fact[0].upper() + fact[1:] + "."


@dataclass
class Turn:
    """One exchange: what the user said, the reply, and how it was made (``route`` is the
    router's route, or ``"remember"`` when the message taught a fact)."""

    user: str
    reply: str
    route: str
    edits_used: list[StoredEdit] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    learned: StoredEdit | None = None


class ChatSession:
    """A conversation with ``edited`` (an :class:`EditedModel`). ``history_turns`` bounds how
    many earlier exchanges the model sees; ``turns`` keeps all of them."""

    def __init__(self, edited: EditedModel, history_turns: int = 4) -> None:
        if not isinstance(edited, EditedModel):
            raise TypeError(f"edited must be an EditedModel, got {type(edited).__name__}")
        whole_number("history_turns", history_turns)
        self.edited = edited
        self.history_turns = history_turns
        self.turns: list[Turn] = []

    @property
    def memory(self):
        return self.edited.memory

    def history(self) -> list[dict[str, str]]:
        """The last ``history_turns`` exchanges as role/content messages. Exchanges that taught
        a fact are left out: the fact lives in the memory (so retracting it takes effect at once)."""
        asked = [t for t in self.turns if t.route != "remember"]
        recent = asked[-self.history_turns:] if self.history_turns else []
        return [m for t in recent for m in ({"role": "user", "content": t.user}, {"role": "assistant", "content": t.reply})]

    def send(self, message: str) -> Turn:
        """Answer ``message`` (or store the fact it asks to remember) and record the exchange."""
        return self._finish(self._start(message))

    def stream(self, message: str) -> Iterator[str]:
        """``send``, as text pieces while the model writes; the exchange is recorded at the end."""
        started = self._start(message)
        if isinstance(started, Turn):
            yield started.reply
            self._finish(started)
            return
        for piece in started:
            yield piece
        self._finish(started)

    def remember(self, statement: str | None = None, **triple: Any) -> StoredEdit:
        """Teach a fact (free text, or ``subject=, prompt=, target=``): used from the next answer on."""
        return self.memory.add(**({"statement": statement} if statement is not None else {}), **triple,
                               **({} if "source" in triple else {"source": "chat"}))

    def forget(self, statement: str | None = None, **triple: Any) -> StoredEdit:
        """Stop telling a fact (an erase edit): questions about it get the router's refusal."""
        return self.remember(statement, kind="erase", **triple)

    def _start(self, message: str):
        if not isinstance(message, str) or not message.strip():
            raise ValueError(f"message must be non-empty text, got {message!r}")
        fact = remembered_fact(message)
        if fact is not None:
            edit = self.remember(fact)
            return Turn(message, f"Noted. I will remember that: {edit.statement}", "remember", learned=edit)
        return self.edited.stream(message, self.history())

    def _finish(self, started) -> Turn:
        if isinstance(started, Turn):
            turn = started
        else:
            if started.answer is None:
                for _ in started:
                    pass
            answer = started.answer
            turn = Turn(started.question, answer.text, answer.route, answer.edits_used, answer.trace)
        self.turns.append(turn)
        return turn

    def __repr__(self) -> str:
        return f"ChatSession({self.edited!r}, turns={len(self.turns)})"
