"""IKE: in-context knowledge editing.

The edits the scope detector calls in scope are quoted before the question, after
demonstrations of the three behaviours (copy, update, retain) from our own pool
(:mod:`.demos`). The first ``n_demos`` demonstrations are a fixed prefix whose key/value
cache is reused across questions; the demonstration most similar to the question goes
last, next to it. With no edit in scope, the unedited model answers.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from memedit.memory import Memory
from memedit.models import LanguageModel

from .base import Plan, Router, demo_turns
from .demos import DEMOS
from .detector import ScopeDetector


class IKERouter(Router):
    """IKE over ``memory``: ``scope`` chooses the facts shown (see ``SERACRouter``); ``k`` the
    nearest edits considered; ``n_demos`` the fixed demonstrations."""

    name = "ike"
    decides_question = True

    def __init__(self, model: LanguageModel, memory: Memory, k: int = 5, scope: str | Any = "edit",
                 threshold: float | None = None, n_demos: int = 8, **options) -> None:
        super().__init__(model, memory, k=k, **options)
        if not 0 <= n_demos < len(DEMOS):
            raise ValueError(f"n_demos must be from 0 to {len(DEMOS) - 1}, got {n_demos!r}")
        self.detector = ScopeDetector(memory, scope, k=k, threshold=threshold)
        self.fixed = list(DEMOS[:n_demos])
        self.choices = list(DEMOS[n_demos:])
        self._choice_vectors = memory.embedder.encode([d.question for d in self.choices])

    def plan(self, question: str, history: Sequence[dict[str, str]] = ()) -> Plan:
        trace: list[dict] = []
        vector = self.detector.embed_question(question, self.detector.named(question))
        shown = self.decide(question, trace, vector).applied[:self.k]
        if not shown:
            return self.base_plan(question, trace, history)
        nearest = self.choices[int(np.argmax(self._choice_vectors @ vector))]
        trace.append({"step": "demonstrations", "fixed": len(self.fixed), "nearest": nearest.question})
        return self.edited_plan(question, shown, demo_turns(self.fixed + [nearest]), len(self.fixed), trace, history)
