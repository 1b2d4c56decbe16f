"""IKE: in-context knowledge editing.

The nearest edits are quoted before the question, after demonstrations of the three
behaviours (copy, update, retain) from our own pool (:mod:`.demos`). The first
``n_demos`` demonstrations are a fixed prefix whose key/value cache is reused across
questions; the demonstration most similar to the question goes last, next to it.
Edits scoring below ``min_score`` (cosine) are not shown; with none left, the
unedited model answers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from memedit.memory import Memory
from memedit.models import LanguageModel

from .base import Plan, Router, demo_turns, hit_record
from .demos import DEMOS


class IKERouter(Router):
    name = "ike"

    def __init__(self, model: LanguageModel, memory: Memory, k: int = 3, min_score: float = 0.3,
                 n_demos: int = 8, **options) -> None:
        super().__init__(model, memory, k=k, **options)
        if not 0 <= n_demos < len(DEMOS):
            raise ValueError(f"n_demos must be from 0 to {len(DEMOS) - 1}, got {n_demos!r}")
        self.min_score = min_score
        self.fixed = list(DEMOS[:n_demos])
        self.choices = list(DEMOS[n_demos:])
        self._choice_vectors = memory.embedder.encode([d.question for d in self.choices])

    def plan(self, question: str, history: Sequence[dict[str, str]] = ()) -> Plan:
        trace: list[dict] = []
        vector = self.memory.embedder.encode_one(question)
        hits = self.retrieve(question, trace, vector)
        shown = [h for h in hits if h.score >= self.min_score]
        trace.append({"step": "scope", "classifier": "cosine", "threshold": self.min_score,
                      "edits": [hit_record(h, in_scope=h.score >= self.min_score) for h in hits]})
        if not shown:
            return self.base_plan(question, trace, history)
        nearest = self.choices[int(np.argmax(self._choice_vectors @ vector))]
        trace.append({"step": "demonstrations", "fixed": len(self.fixed), "nearest": nearest.question})
        return self.edited_plan(question, [h.edit for h in shown], demo_turns(self.fixed + [nearest]), len(self.fixed), trace, history)
