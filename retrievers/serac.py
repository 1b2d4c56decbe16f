"""SERAC: a scope classifier decides whether a question falls under a stored edit.

In scope, a counterfactual answer comes from the model conditioned on that one edit
(quoted, after a few copy and update demonstrations); out of scope, the unedited model
answers with exactly the prompt it would have had without the memory. The classifier is
cosine similarity with a calibrated threshold (``scope="embedding"``) or a cross-encoder
trained on KnowEdit-style data (``scope="cross-encoder"``, see ``bench/scope.py``).
"""

from __future__ import annotations

from typing import Sequence

from pathlib import Path

from memedit.memory import Memory
from memedit.model_files import cache_dir
from memedit.models import LanguageModel

from .base import Plan, Router, demo_turns, hit_record
from .demos import by_kind
from .scope import CrossEncoderScope, EmbeddingScope, ScopeClassifier

SCOPES = ("embedding", "cross-encoder")
# Cosine threshold of the embedding classifier, calibrated (F1-max) by bench/scope.py on
# KnowEdit training cases; the cross-encoder stores its own threshold next to its weights.
EMBEDDING_THRESHOLD = 0.701


def default_scope_path() -> Path:
    """Where ``bench/scope.py`` saves the trained cross-encoder."""
    return cache_dir() / "scope" / "minilm-knowedit"


def load_scope(kind: str, embedder=None, path: str | Path | None = None) -> ScopeClassifier:
    """The scope classifier called ``kind``: ``embedding`` or ``cross-encoder`` (from ``path``)."""
    if kind == "embedding":
        return EmbeddingScope(embedder, threshold=EMBEDDING_THRESHOLD)
    if kind == "cross-encoder":
        return CrossEncoderScope.load(path or default_scope_path())
    raise ValueError(f"unknown scope classifier {kind!r}; choose one of: {', '.join(SCOPES)}")


class SERACRouter(Router):
    name = "serac"

    def __init__(self, model: LanguageModel, memory: Memory, scope: str | ScopeClassifier = "embedding",
                 k: int = 3, threshold: float | None = None, **options) -> None:
        super().__init__(model, memory, k=k, **options)
        self.scope = load_scope(scope, embedder=memory.embedder) if isinstance(scope, str) else scope
        if threshold is not None:
            self.scope.threshold = threshold
        self.demos = demo_turns(by_kind("copy")[:2] + by_kind("update")[:2])

    def plan(self, question: str, history: Sequence[dict[str, str]] = ()) -> Plan:
        trace: list[dict] = []
        hits = self.retrieve(question, trace)
        scores = self.scope.scores(question, [h.edit.statement for h in hits]) if hits else []
        ranked = sorted(zip(scores, range(len(hits))), reverse=True)
        trace.append({"step": "scope", "classifier": self.scope.name, "threshold": self.scope.threshold,
                      "edits": [hit_record(h, scope_score=round(float(s), 4), in_scope=bool(s >= self.scope.threshold))
                                for h, s in zip(hits, scores)]})
        in_scope = [hits[i].edit for s, i in ranked if s >= self.scope.threshold]
        if not in_scope:
            return self.base_plan(question, trace, history)
        return self.edited_plan(question, in_scope[:1], self.demos, len(self.demos) // 2, trace, history)
