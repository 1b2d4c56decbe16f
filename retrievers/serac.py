"""SERAC: the scope detector decides whether a question falls under a stored edit.

In scope, a counterfactual answer comes from the model conditioned on that one edit
(quoted, after a few copy and update demonstrations, one of which asks a step beyond its
fact); out of scope, the unedited model answers with exactly the prompt it would have had
without the memory. The detector is :class:`~memedit.retrievers.detector.ScopeDetector`
with the edit-aware classifier by default (``scope="edit"``); ``"embedding"`` (cosine)
and ``"cross-encoder"`` (trained by ``bench/scope.py``) are the statement-only ones.
"""

from __future__ import annotations

from typing import Any, Sequence

from memedit.memory import Memory
from memedit.models import LanguageModel

from .base import Plan, Router, demo_turns
from .demos import by_kind
from .detector import ScopeDetector

class SERACRouter(Router):
    """SERAC over ``memory``: ``scope`` is ``"edit"`` (default), ``"embedding"``,
    ``"cross-encoder"`` or a classifier object; ``k`` the nearest edits it considers besides
    those whose subject the question names; ``threshold`` overrides the classifier's."""

    name = "serac"
    decides_question = True

    def __init__(self, model: LanguageModel, memory: Memory, scope: str | Any = "edit",
                 k: int = 5, threshold: float | None = None, **options) -> None:
        super().__init__(model, memory, k=k, **options)
        self.detector = ScopeDetector(memory, scope, k=k, threshold=threshold)
        update = by_kind("update")
        # Two copies, a paraphrase, and a question one step beyond its fact (the Eiffel Tower
        # in Rome, so the capital of which country?): a fact in scope is used, not only copied.
        self.demos = demo_turns(by_kind("copy")[:2] + [update[0], next(d for d in update if "capital of which" in d.question)])

    def plan(self, question: str, history: Sequence[dict[str, str]] = ()) -> Plan:
        trace: list[dict] = []
        decision = self.decide(question, trace)
        if decision.best is None:
            return self.base_plan(question, trace, history)
        return self.edited_plan(question, [decision.best], self.demos, len(self.demos) // 2, trace, history)
