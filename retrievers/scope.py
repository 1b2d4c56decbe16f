"""Scope classifiers: does a question fall under a stored edit?

SERAC (and PokeMQA's detector) route a question to the counterfactual path only when a
scope classifier says it is covered by an edit. Two classifiers share one protocol
(``name``, ``threshold``, ``scores(question, statements)``, ``in_scope(...)``):

- :class:`EmbeddingScope`: cosine similarity of MiniLM embeddings, with a threshold
  calibrated on labelled pairs (``scope_pairs.calibrate``).
- :class:`CrossEncoderScope`: the packaged MiniLM fine-tuned as a cross-encoder (one
  logit, sigmoid) on labelled pairs (``scope_training.train_cross_encoder``).

This module holds what runs at answer time. Building labelled pairs and calibrating a
threshold are in :mod:`.scope_pairs`; training in :mod:`.scope_training`. A trained
cross-encoder lives in a folder (model, tokenizer, ``scope.json``); ``load`` checks the
weights against the SHA-256 recorded at training time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from memedit.embeddings import DEFAULT_EMBEDDER
from memedit.errors import ModelPackageError
from memedit.files import check_sha256, quiet_hf, sha256_file, write_atomic
from memedit.model_files import cache_dir

SCOPE_FILE = "scope.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
DEFAULT_MAX_LENGTH = 64
RETRAIN_COMMAND = "python bench/scope.py --out {folder}"


@dataclass(frozen=True)
class ScopePair:
    """A question, an edit statement, and whether the question is in the edit's scope (1) or not (0).

    ``kind`` says where the question came from: a probe metric of the edit's own case
    (``reliability``, ``generality``, ``portability``, ``locality``) or ``unrelated``
    (a prompt of another case).
    """

    question: str
    statement: str
    label: int
    kind: str = ""
    edit: Any = None  # the edit itself (subject, prompt...), for detectors that read more than the statement


# ---------------------------------------------------------------- the protocol


@runtime_checkable
class ScopeClassifier(Protocol):
    """What a router needs from a scope classifier."""

    name: str
    threshold: float

    def scores(self, question: str, statements: list[str]) -> np.ndarray: ...

    def in_scope(self, question: str, statements: list[str]) -> np.ndarray: ...


class _Scope:
    """Shared behaviour: thresholding and pair scoring."""

    name = "scope"
    threshold: float

    def scores(self, question: str, statements: list[str]) -> np.ndarray:
        raise NotImplementedError

    def in_scope(self, question: str, statements: list[str]) -> np.ndarray:
        """A boolean per statement: is ``question`` in its scope (score >= threshold)?"""
        return self.scores(question, list(statements)) >= self.threshold

    def pair_scores(self, pairs: Sequence[ScopePair]) -> np.ndarray:
        """The score of each pair, in order (subclasses batch this)."""
        return np.array([self.scores(p.question, [p.statement])[0] for p in pairs], dtype=np.float32)



# ---------------------------------------------------------------- embedding similarity


class EmbeddingScope(_Scope):
    """In scope when the cosine of the question's and the statement's MiniLM embeddings
    reaches ``threshold``. ``embedder`` defaults to ``memedit.embeddings.get_embedder()``."""

    name = "embedding"

    def __init__(self, embedder: Any = None, threshold: float = 0.6) -> None:
        self._embedder = embedder
        self.threshold = float(threshold)

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from memedit.embeddings import get_embedder

            self._embedder = get_embedder(DEFAULT_EMBEDDER)
        return self._embedder

    def scores(self, question: str, statements: list[str]) -> np.ndarray:
        """Cosine similarity of ``question`` to each statement."""
        if not statements:
            return np.zeros(0, dtype=np.float32)
        vectors = self.embedder.encode([question, *statements])
        return (vectors[1:] @ vectors[0]).astype(np.float32)

    def pair_scores(self, pairs: Sequence[ScopePair]) -> np.ndarray:
        """Cosine of each pair, embedding every distinct text once."""
        texts = list(dict.fromkeys(t for p in pairs for t in (p.question, p.statement)))
        if not texts:
            return np.zeros(0, dtype=np.float32)
        row = {t: i for i, t in enumerate(texts)}
        vectors = self.embedder.encode(texts)
        q = vectors[[row[p.question] for p in pairs]]
        s = vectors[[row[p.statement] for p in pairs]]
        return np.sum(q * s, axis=1).astype(np.float32)


# ---------------------------------------------------------------- cross-encoder


def _load_model(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with quiet_hf():
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model.eval()
    return model, tokenizer


class CrossEncoderScope(_Scope):
    """The packaged MiniLM fine-tuned to read (question, statement) together and give the
    probability that the question is in the statement's scope. Make one with
    ``scope_training.train_cross_encoder``, open a saved one with :meth:`load`."""

    name = "cross-encoder"

    def __init__(self, model: Any, tokenizer: Any, threshold: float = 0.5, max_length: int = DEFAULT_MAX_LENGTH,
                 folder: Path | None = None, meta: dict[str, Any] | None = None, batch_size: int = 64) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.threshold = float(threshold)
        self.max_length = int(max_length)
        self.folder = folder
        self.meta = dict(meta or {})
        self.batch_size = batch_size

    def scores(self, question: str, statements: list[str]) -> np.ndarray:
        """Sigmoid of the cross-encoder's logit for ``question`` with each statement."""
        return self._score([(question, s) for s in statements])

    def pair_scores(self, pairs: Sequence[ScopePair]) -> np.ndarray:
        return self._score([(p.question, p.statement) for p in pairs])

    def _score(self, items: list[tuple[str, str]]) -> np.ndarray:
        import torch

        out = np.zeros(len(items), dtype=np.float32)
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]) + len(items[i][1]))
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                logits = self.model(**self._encode([items[i] for i in chunk])).logits.squeeze(-1)
                out[chunk] = torch.sigmoid(logits).float().numpy()
        return out

    def _encode(self, items: list[tuple[str, str]]) -> dict[str, Any]:
        questions, statements = zip(*items)
        return self.tokenizer(list(questions), list(statements), truncation=True, max_length=self.max_length,
                              padding=True, return_tensors="pt")

    # -- saving and loading ------------------------------------------------------------

    def save(self, out_dir: str | Path) -> Path:
        """Write model, tokenizer and ``scope.json`` (with the weights' SHA-256) into ``out_dir``."""
        folder = Path(out_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SCOPE_FILE).unlink(missing_ok=True)  # a folder without scope.json is never loadable half-written
        with quiet_hf():
            self.model.save_pretrained(str(folder))
            self.tokenizer.save_pretrained(str(folder))
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise ModelPackageError(f"saving the scope classifier did not write {weights}")
        meta = {**self.meta, "threshold": self.threshold, "max_length": self.max_length,
                "weights_file": WEIGHTS_FILE, "weights_sha256": sha256_file(weights)}
        write_atomic(folder / SCOPE_FILE, (json.dumps(meta, indent=2) + "\n").encode())
        self.folder, self.meta = folder, meta
        return folder

    @classmethod
    def load(cls, out_dir: str | Path) -> "CrossEncoderScope":
        """Open a cross-encoder saved by ``train_cross_encoder`` (or :meth:`save`); ModelPackageError when it is missing or damaged."""
        folder = Path(out_dir).expanduser()
        meta = read_scope_meta(folder)
        model, tokenizer = _load_model(folder)
        return cls(model, tokenizer, threshold=meta["threshold"], max_length=meta.get("max_length", DEFAULT_MAX_LENGTH),
                   folder=folder, meta=meta)


def read_scope_meta(folder: Path) -> dict[str, Any]:
    """``scope.json`` of a trained classifier folder, with its weights checked against their SHA-256."""
    fix = f"retrain it with: {RETRAIN_COMMAND.format(folder=folder)}"
    path = folder / SCOPE_FILE
    if not path.is_file():
        raise ModelPackageError(f"{folder} holds no trained scope classifier ({SCOPE_FILE} is missing); {fix}")
    try:
        meta = json.loads(path.read_text())
        expected, weights = meta["weights_sha256"], folder / meta.get("weights_file", WEIGHTS_FILE)
        float(meta["threshold"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelPackageError(f"{path} is damaged ({exc!r}); {fix}") from None
    if not weights.is_file():
        raise ModelPackageError(f"{weights} is missing from the scope classifier in {folder}; {fix}")
    check_sha256(weights, expected, f"the scope classifier in {folder} is damaged or was changed; {fix}")
    return meta


# Cosine threshold of the embedding classifier, calibrated (F1-max) by bench/scope.py on
# KnowEdit training cases; the cross-encoder stores its own threshold next to its weights.
EMBEDDING_THRESHOLD = 0.701


def default_scope_path() -> Path:
    """Where ``bench/scope.py`` saves the trained cross-encoder."""
    return cache_dir() / "scope" / "minilm-knowedit"


def load_scope(kind: str, embedder=None, path: str | Path | None = None) -> "ScopeClassifier":
    """The statement-only classifier called ``kind``: ``embedding`` or ``cross-encoder`` (from ``path``)."""
    if kind == "embedding":
        return EmbeddingScope(embedder, threshold=EMBEDDING_THRESHOLD)
    if kind == "cross-encoder":
        return CrossEncoderScope.load(path or default_scope_path())
    raise ValueError(f"unknown scope classifier {kind!r}; choose one of: embedding, cross-encoder")
