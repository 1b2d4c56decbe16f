"""ChatSession: a conversation with an EditedModel, where facts can be taught mid-conversation.

A user message that starts with "remember that ..." (or "from now on, remember that ...",
"please remember: ...", possibly after a short first sentence such as "That is wrong.")
stores the rest as an edit in the session's memory namespace and is acknowledged without
asking the model; every other message is answered through the
router with the edits applied and the conversation so far as history. The bot (the code
around it) teaches facts with :meth:`ChatSession.remember` and erases with :meth:`forget`.

With ``consolidate_policy``, each turn also starts consolidating the edits the policy
chooses into the model's weights, in the background (see :meth:`ChatSession.start_consolidation`).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from .checks import whole_number
from .edited_model import EditedModel
from .errors import ArgumentError
from .memory import Memory
from .models import LanguageModel, load_model
from .store import StoredEdit

logger = logging.getLogger(__name__)

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
    many earlier exchanges the model sees; ``turns`` keeps all of them.

    ``consolidate_policy`` (a ``ConsolidationPolicy`` or a dict of its fields) makes every
    turn start a background consolidation of the edits it chooses, on a private copy of
    the model, never on the one answering; ``consolidate_options`` go to
    ``Memory.consolidate`` (``method``, ``stats_tokens``, ...). It needs a local model.
    ``last_consolidation`` is the last job's report, or the exception it raised.
    """

    def __init__(self, edited: EditedModel, history_turns: int = 4, consolidate_policy: Any = None,
                 consolidate_options: dict[str, Any] | None = None) -> None:
        if not isinstance(edited, EditedModel):
            raise TypeError(f"edited must be an EditedModel, got {type(edited).__name__}")
        whole_number("history_turns", history_turns)
        self.edited = edited
        self.history_turns = history_turns
        self.turns: list[Turn] = []
        self.consolidate_policy = None if consolidate_policy is None else _background_policy(edited, consolidate_policy)
        self.consolidate_options = _background_options(consolidate_options)
        self.last_consolidation: Any = None
        self._job: threading.Thread | None = None
        self._job_lock = threading.Lock()

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
        self.start_consolidation()
        return turn

    # -- background consolidation ---------------------------------------------------

    @property
    def consolidating(self) -> bool:
        """Whether a background consolidation is running."""
        return self._job is not None and self._job.is_alive()

    def start_consolidation(self) -> bool:
        """Start consolidating the edits ``consolidate_policy`` chooses, in a daemon thread;
        False (and nothing started) without a policy or while a job runs. Each turn calls it.

        The job opens its own view of the database (so the answers' retrieval never waits for
        it), loads a private copy of the model with the base weights, applies the batches in
        force, and consolidates there: the weight editors' hooks never touch the model that
        answers. Once a batch is journaled, the session's model takes it, under its lock.
        A failure is logged and kept in ``last_consolidation``; the edits stay on the
        retrieval path."""
        if self.consolidate_policy is None:
            return False
        with self._job_lock:
            if self.consolidating:
                return False
            self._job = threading.Thread(target=self._consolidate, name="memedit-consolidate", daemon=True)
            self._job.start()
        return True

    def wait_consolidation(self, timeout: float | None = None) -> Any:
        """Wait for the running job (if any) to end; returns ``last_consolidation``.
        TimeoutError if it is still running after ``timeout`` seconds."""
        job = self._job
        if job is not None:
            job.join(timeout)
            if job.is_alive():
                raise TimeoutError(f"the background consolidation is still running after {timeout} s")
        return self.last_consolidation

    def _consolidate(self) -> None:
        try:
            self.last_consolidation = self._consolidate_once()
            logger.info("background consolidation: %s", self.last_consolidation.lines()[0])
        except Exception as err:  # recorded, never raised: the conversation goes on
            logger.exception("background consolidation failed; the edits stay on the retrieval path")
            self.last_consolidation = err

    def _consolidate_once(self):
        memory, model = self.memory, self.edited.model
        policy, weight_editors = self.consolidate_policy, memory.weight_editors
        method = self.consolidate_options.get("method", "memit")
        with _private_view(memory) as private:
            chosen = weight_editors.select(private, policy)
            if not chosen:
                return weight_editors.nothing_matched(policy, method)
            spare = load_model(model.name, device=model.device, dtype=_dtype(model), fresh=True)  # the base weights
            private.apply_consolidated(spare)
            report = private.consolidate(spare, edits=chosen, **self.consolidate_options)
        if report.committed:
            try:
                with model._lock:  # not between the tokens of an answer
                    memory.apply_consolidated(model)
                    model.weights_changed()
            except BaseException:
                memory.revert(report.batch)  # the answering model cannot carry it: its edits go back
                raise
        return report

    def __repr__(self) -> str:
        return f"ChatSession({self.edited!r}, turns={len(self.turns)})"


def _background_policy(edited: EditedModel, policy: Any) -> Any:
    """``policy`` checked for background consolidation on ``edited``'s model and memory."""
    model = edited.model
    if not isinstance(model, LanguageModel) or not hasattr(model.model, "named_parameters"):
        raise ArgumentError("consolidate_policy", f"needs a local model whose weights can be written; {type(model).__name__} "
                                                  f"is a black box without local weights (leave consolidate_policy out)")
    if edited.memory.path == ":memory:":
        raise ArgumentError("consolidate_policy", "needs a database file: a ':memory:' database has no artifacts folder for "
                                                  "the batches' deltas, and a background job cannot open it")
    return edited.memory.weight_editors.as_policy(policy)


def _background_options(options: dict[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ArgumentError("consolidate_options", f"must be a dict of Memory.consolidate options, got {type(options).__name__}")
    taken = sorted({"edits", "policy", "model"} & set(options))
    if taken:
        raise ArgumentError("consolidate_options", f"must not set {', '.join(taken)}: consolidate_policy chooses the edits "
                                                   f"and the job makes its own copy of the model")
    return dict(options)


def _private_view(memory: Memory) -> Memory:
    """Another Memory over the same database and namespace, with its own connection and lock."""
    shared = memory._shared
    with memory.lock:  # the embedder is loaded on first use: by one thread
        embedder = memory.embedder
    return Memory(memory.path, namespace=memory.namespace, embedder=embedder,
                  hnsw_threshold=shared.hnsw_threshold, artifacts_dir=shared.store._artifacts_dir)


def _dtype(model: LanguageModel) -> str:
    return str(next(model.model.parameters()).dtype).removeprefix("torch.")
