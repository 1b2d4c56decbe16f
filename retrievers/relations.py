"""The relation bank: how people ask for some 96 relations, so the scope detector can tell
which relation a question asks even when its words are far from the edit's prompt
("Who runs X?" against "The CEO of X is").

The bank is every cloze prompt and question of ``data/relation_templates.json`` (written
for this project, about invented entities) with the entity masked out, embedded once with
the detector's MiniLM. The vectors travel inside the detector's head file, so a question
never waits for them. For a masked question (or an edit's masked prompt) :meth:`RelationBank.scores`
gives, per relation, the best cosine to that relation's rows; :func:`bank_features` turns
the question's and the edit's scores into the head's relation features.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .entities import mask_prompt

TEMPLATES = Path(__file__).parent / "data" / "relation_templates.json"
FEATURES = ("bank_own", "bank_margin", "bank_agree", "bank_fit")
TEMPERATURE = 0.05  # softmax temperature over relations for the agreement feature


def bank_texts(path: str | Path = TEMPLATES) -> tuple[list[str], np.ndarray]:
    """(every masked prompt and question of the templates, grouped by relation; each row's relation number)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    texts: list[str] = []
    relation: list[int] = []
    for number, entry in enumerate(data["relations"]):
        rows = list(dict.fromkeys(mask_prompt(t) for t in [*entry["prompts"], *entry["questions"]]))
        texts += rows
        relation += [number] * len(rows)
    return texts, np.array(relation, dtype=np.int64)


class RelationBank:
    """Embedded template rows (``vectors``, unit length) and the relation of each (``relation``, grouped)."""

    def __init__(self, vectors: np.ndarray, relation: np.ndarray) -> None:
        if len(vectors) != len(relation) or len(relation) == 0 or np.any(np.diff(relation) < 0):
            raise ValueError("a relation bank needs one relation number per row, rows grouped by relation")
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.relation = np.asarray(relation, dtype=np.int64)
        self._starts = np.flatnonzero(np.r_[True, np.diff(self.relation) != 0])

    @classmethod
    def build(cls, embed: Callable[[Sequence[str]], np.ndarray], path: str | Path = TEMPLATES) -> "RelationBank":
        texts, relation = bank_texts(path)
        return cls(embed(texts), relation)

    @property
    def size(self) -> int:
        """How many relations the bank holds."""
        return len(self._starts)

    def scores(self, vectors: np.ndarray, holdout: float | None = None) -> np.ndarray:
        """Per vector and relation, the best cosine to that relation's rows. With ``holdout``,
        rows at least that close are ignored (training: a template question must not find
        itself in the bank)."""
        sims = np.atleast_2d(np.asarray(vectors, dtype=np.float32)) @ self.vectors.T
        if holdout is not None:
            sims = np.where(sims >= holdout, -1.0, sims)
        return np.maximum.reduceat(sims, self._starts, axis=1)


def bank_features(question: np.ndarray, edit: np.ndarray) -> dict[str, float]:
    """The head's relation features from a masked question's and an edit's per-relation scores:
    how well the question fits the edit's relation (``bank_own``), by how much more than any
    other relation (``bank_margin``), how much their soft relation choices agree
    (``bank_agree``), and how well the edit's relation is known to the bank (``bank_fit``)."""
    own = int(np.argmax(edit))
    others = np.delete(question, own)
    agree = float(_softmax(question / TEMPERATURE) @ _softmax(edit / TEMPERATURE))
    return {"bank_own": float(question[own]), "bank_margin": float(question[own] - others.max()),
            "bank_agree": agree, "bank_fit": float(edit[own])}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def bank_arrays(bank: RelationBank) -> dict[str, Any]:
    """The bank as arrays to save beside the head's weights."""
    return {"bank_vectors": bank.vectors.astype(np.float16), "bank_relation": bank.relation}


def bank_from_arrays(weights: dict[str, np.ndarray]) -> RelationBank | None:
    """The bank saved with a head, or None when the head has none."""
    if "bank_vectors" not in weights:
        return None
    return RelationBank(weights["bank_vectors"].astype(np.float32), weights["bank_relation"])
