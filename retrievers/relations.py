"""The relation bank: how people ask for some 185 relations, so the scope detector can tell
which relation a question asks even when its words are far from the edit's prompt
("Who runs X?" against "The CEO of X is").

The bank is every cloze prompt and question of ``data/relation_templates.json`` (written
for this project, about invented entities) with the entity masked out, embedded once with
the detector's MiniLM. The vectors travel inside the detector's head file (and each
relation's typical target, :func:`typical_targets`, in its meta), so a question never
waits for them and never reads the templates. For a masked question (or an edit's masked prompt) :meth:`RelationBank.scores`
gives, per relation, the best cosine to that relation's rows; :meth:`RelationBank.features`
turns the question's and the edit's scores into the head's relation features.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .entities import mask_prompt, wh_word_of

TEMPLATES = Path(__file__).parent / "data" / "relation_templates.json"
FEATURES = ("bank_own", "bank_margin", "bank_agree", "bank_fit", "bank_wh", "wh_asked")
TEMPERATURE = 0.05  # softmax temperature over relations for the agreement feature
WH_WORDS = ("who", "where", "when", "what", "which", "how")


def wh_word(text: str) -> int | None:
    """The index in ``WH_WORDS`` of the first question word of ``text`` (whom, whose: who), or None."""
    word = wh_word_of(text)
    return None if word is None else WH_WORDS.index(word)


def relation_groups(relations: Sequence[dict[str, Any]]) -> list[int]:
    """Per template relation, the number of its group: relations joined by ``same_as`` (people
    ask for them with the same words) share one, numbered in order of first appearance."""
    index = {entry["name"]: i for i, entry in enumerate(relations)}
    parent = list(range(len(relations)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, entry in enumerate(relations):
        for name in entry.get("same_as", ()):
            if name not in index:
                raise ValueError(f"relation {entry['name']!r}: same_as names unknown relation {name!r}")
            parent[root(index[name])] = root(i)
    numbers: dict[int, int] = {}
    return [numbers.setdefault(root(i), len(numbers)) for i in range(len(relations))]


def bank_texts(path: str | Path = TEMPLATES) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(every masked prompt and question of the templates, grouped by relation; each row's
    relation number; per relation, the share of its questions that use each of ``WH_WORDS``).
    Relations joined by ``same_as`` are one relation here."""
    relations = json.loads(Path(path).read_text(encoding="utf-8"))["relations"]
    groups = relation_groups(relations)
    texts: list[str] = []
    relation: list[int] = []
    wh = np.zeros((max(groups) + 1, len(WH_WORDS)), dtype=np.float32)
    for number in range(len(wh)):
        members = [entry for entry, group in zip(relations, groups) if group == number]
        rows = list(dict.fromkeys(mask_prompt(t) for entry in members for t in [*entry["prompts"], *entry["questions"]]))
        texts += rows
        relation += [number] * len(rows)
        for question in (q for entry in members for q in entry["questions"]):
            word = wh_word(question)
            if word is not None:
                wh[number, word] += 1
        wh[number] /= max(wh[number].sum(), 1.0)
    return texts, np.array(relation, dtype=np.int64), wh


@lru_cache(maxsize=4)
def typical_targets(path: str | Path = TEMPLATES) -> tuple[str | None, ...]:
    """Per relation, numbered as :func:`bank_texts` numbers them, the first example target
    of its templates ("cello" for an instrument), or None where it has none."""
    relations = json.loads(Path(path).read_text(encoding="utf-8"))["relations"]
    targets: dict[int, str | None] = {}
    for entry, group in zip(relations, relation_groups(relations)):
        if targets.get(group) is None:
            targets[group] = (entry.get("target_examples") or [None])[0]
    return tuple(targets[group] for group in range(len(targets)))


# Up to this many rows, :meth:`RelationBank.scores` multiplies row by row: OpenBLAS's
# matrix-matrix product costs about four times as much for a question's two rows (0.23
# against 0.06 ms on this project's 2-core CPU); past it, the one product is cheaper.
FEW_ROWS = 4


class RelationBank:
    """Embedded template rows (``vectors``, unit length), the relation of each (``relation``,
    grouped), and per relation the share of its questions asked with each of ``WH_WORDS`` (``wh``)."""

    def __init__(self, vectors: np.ndarray, relation: np.ndarray, wh: np.ndarray | None = None) -> None:
        if len(vectors) != len(relation) or len(relation) == 0 or np.any(np.diff(relation) < 0):
            raise ValueError("a relation bank needs one relation number per row, rows grouped by relation")
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.relation = np.asarray(relation, dtype=np.int64)
        self._starts = np.flatnonzero(np.r_[True, np.diff(self.relation) != 0])
        self.wh = np.zeros((self.size, len(WH_WORDS)), np.float32) if wh is None else np.asarray(wh, dtype=np.float32)
        if self.wh.shape != (self.size, len(WH_WORDS)):
            raise ValueError(f"wh must have one row of {len(WH_WORDS)} shares per relation")

    @classmethod
    def build(cls, embed: Callable[[Sequence[str]], np.ndarray], path: str | Path = TEMPLATES) -> "RelationBank":
        texts, relation, wh = bank_texts(path)
        return cls(embed(texts), relation, wh)

    @property
    def size(self) -> int:
        """How many relations the bank holds."""
        return len(self._starts)

    def scores(self, vectors: np.ndarray, holdout: float | None = None) -> np.ndarray:
        """Per vector and relation, the best cosine to that relation's rows. With ``holdout``,
        rows at least that close are ignored (training: a template question must not find
        itself in the bank)."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if len(vectors) <= FEW_ROWS:  # a question's few rows: one matrix-vector product each
            sims = np.stack([self.vectors @ row for row in vectors])
        else:
            sims = vectors @ self.vectors.T
        if holdout is not None:
            sims = np.where(sims >= holdout, -1.0, sims)
        return np.maximum.reduceat(sims, self._starts, axis=1)

    def features(self, question: np.ndarray, edit: np.ndarray, wh: int | None) -> dict[str, float]:
        """The head's relation features from a masked question's and an edit's per-relation
        scores and the question's question word: how well the question fits the edit's relation
        (``bank_own``), by how much more than any other relation (``bank_margin``), how much
        their soft relation choices agree (``bank_agree``), how well the edit's relation is known
        to the bank (``bank_fit``), and how often that relation is asked with the question's
        word (``bank_wh``: "Who invented X?" is never how a place of origin is asked for)."""
        own = int(np.argmax(edit))
        others = np.delete(question, own)
        agree = float(_softmax(question / TEMPERATURE) @ _softmax(edit / TEMPERATURE))
        return {"bank_own": float(question[own]), "bank_margin": float(question[own] - others.max()),
                "bank_agree": agree, "bank_fit": float(edit[own]),
                "bank_wh": float(self.wh[own, wh]) if wh is not None else 0.0, "wh_asked": float(wh is not None)}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def bank_arrays(bank: RelationBank) -> dict[str, Any]:
    """The bank as arrays to save beside the head's weights."""
    return {"bank_vectors": bank.vectors.astype(np.float16), "bank_relation": bank.relation, "bank_wh": bank.wh}


def bank_from_arrays(weights: dict[str, np.ndarray]) -> RelationBank | None:
    """The bank saved with a head, or None when the head has none."""
    if "bank_vectors" not in weights:
        return None
    return RelationBank(weights["bank_vectors"].astype(np.float32), weights["bank_relation"], weights.get("bank_wh"))
