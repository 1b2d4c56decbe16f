"""The relation check: does a question, its entity masked, ask for what an edit states?

The scope head judges a question against an edit from embeddings made apart (the masked
question's and the edit prompt's); two texts that share most of their words ("Who is the
CFO of X?" / "The chief financial officer of X is ...") or differ in one word ("the
vice-chancellor of X" / "the chancellor of X") are hard to tell that way. The relation check
reads both at once: the packaged MiniLM as a cross-encoder over ``(question with the entity
masked, statement with the subject masked)``, mean-pooled, then one linear layer.

What it learns is small: rank-8 adapters (LoRA) on each matrix product of MiniLM's six
layers and the linear layer, about 1.3 MB, shipped in ``retrievers/data`` with their SHA-256
and reproduced by ``memedit scope train`` (about 70 minutes on 2 cores, on the head's pairs,
masked, and the same pairs unmasked). It runs on the embedder's own encoder (no second copy
of MiniLM), the adapters' low-rank products added beside its matrix products, so the question's
embeddings and the check's pairs can share one pass (:meth:`RelationCheck.embed_and_score`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from memedit.embeddings import MINILM_SHA256, minilm_path
from memedit.errors import ModelPackageError
from memedit.files import quiet_hf, read_checked_meta

CHECK_FILE = "relation_check.safetensors"
CHECK_META = "relation_check.json"
RANK = 8
SCALE = 2.0  # the adapters' output is multiplied by this (LoRA's alpha / rank)
MAX_LENGTH = 64
# The matrices of each MiniLM layer that get an adapter.
TARGETS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "intermediate.dense", "output.dense")


def load_minilm() -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_path()
    with quiet_hf():
        return AutoModel.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder))


def adapted_layers(model: Any) -> list[tuple[str, Any]]:
    """(name, linear) of every matrix that carries an adapter."""
    return [(f"{i}.{name}", layer.get_submodule(name)) for i, layer in enumerate(model.encoder.layer) for name in TARGETS]


class RelationCheck:
    """Scores ``(masked question, masked statement)`` pairs: the probability that the question
    asks for what the statement states. :meth:`load` opens the shipped one (or a folder).
    ``embedder`` is the packaged MiniLM's (:func:`memedit.embeddings.get_embedder`), whose
    encoder the check runs with ``adapters`` (per layer, see ``BertForward.pooled``)."""

    CACHE_SIZE = 20_000
    PAIRS_PER_PASS = 16  # pairs packed into one pass when many are scored at once

    def __init__(self, embedder: Any, adapters: list, weight: np.ndarray, bias: float, threshold: float,
                 meta: dict[str, Any] | None = None) -> None:
        self.embedder, self.adapters = embedder, adapters
        self.weight, self.bias = np.asarray(weight, np.float32), float(bias)
        self.threshold = float(threshold)
        self.meta = dict(meta or {})
        self._cache: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def scores(self, items: Sequence[tuple[str, str]]) -> np.ndarray:
        """The probability for each ``(masked question, masked statement)``; each pair computed once."""
        with self._lock:
            known = {item: self._cache[item] for item in items if item in self._cache}
        missing = list(dict.fromkeys(item for item in items if item not in known))
        for start in range(0, len(missing), self.PAIRS_PER_PASS):
            known.update(self.embed_and_score([], missing[start:start + self.PAIRS_PER_PASS])[1])
        return np.array([known[item] for item in items], dtype=np.float32)

    def embed_and_score(self, texts: Sequence[str], items: Sequence[tuple[str, str]]
                        ) -> tuple[np.ndarray, dict[tuple[str, str], float]]:
        """The embedder's vectors of ``texts`` and the probability of each pair of ``items``, in
        one encoder pass (the texts without the adapters, the pairs with them); the pairs' scores
        are cached."""
        import torch

        encoder = self.embedder.forward
        sequences = self.embedder.token_ids(list(texts)) + (encode_pairs(self.embedder.tokenizer, items, padded=False) if items else [])
        if not sequences:
            return np.zeros((0, self.embedder.dim), np.float32), {}
        with torch.inference_mode():
            pooled = encoder.pooled(sequences, self.adapters, len(texts))
            vectors = torch.nn.functional.normalize(pooled[:len(texts)], dim=-1).numpy()
            pair_pooled = pooled[len(texts):].numpy()
        fresh = 1.0 / (1.0 + np.exp(-np.clip(pair_pooled @ self.weight + self.bias, -30, 30)))
        found = {item: float(p) for item, p in zip(items, fresh)}
        with self._lock:
            self._cache.update(found)
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return vectors, found

    def known(self, item: tuple[str, str]) -> bool:
        """Whether the pair's score is cached."""
        with self._lock:
            return item in self._cache

    @classmethod
    def load(cls, folder: str | Path, fix: str = "", embedder: Any = None) -> "RelationCheck":
        """The check in ``folder``, checked against its SHA-256; ModelPackageError (ending in
        ``fix``, how to rebuild it) when it is missing or damaged."""
        from safetensors.numpy import load_file

        from memedit.embeddings import get_embedder

        folder = Path(folder)
        meta_path, weights = folder / CHECK_META, folder / CHECK_FILE
        if not meta_path.is_file() or not weights.is_file():
            raise ModelPackageError(f"{folder} holds no relation check ({CHECK_META} and {CHECK_FILE}); {fix}")
        meta = read_checked_meta(meta_path, weights, fix, "the relation check")
        if meta.get("base_model_sha256") != MINILM_SHA256 or meta.get("rank") != RANK:
            raise ModelPackageError(f"{meta_path} was made for another MiniLM or adapter size; {fix}")
        embedder = embedder or get_embedder()
        if embedder.forward is None:
            raise ModelPackageError(f"the relation check runs on the packaged MiniLM's encoder, which {embedder.name!r} is not; "
                                    "load it without an embedder (it takes memedit.embeddings.get_embedder())")
        arrays = load_file(str(weights))
        return cls(embedder, adapters(arrays), arrays["classifier.weight"], float(arrays["classifier.bias"]), meta["threshold"], meta)


def adapters(arrays: dict[str, np.ndarray]) -> list[tuple[tuple[Any, Any], ...]]:
    """Per layer, the low-rank factors ``(a, b)`` of its four products as ``BertForward`` runs
    them (query, key and value in one), ``SCALE`` folded into ``b``."""
    import torch

    def pair(name: str) -> tuple[Any, Any]:
        return torch.from_numpy(arrays[f"{name}.A"]).float(), SCALE * torch.from_numpy(arrays[f"{name}.B"]).float()

    layers = sorted({int(key.split(".")[0]) for key in arrays if key[0].isdigit()})
    out = []
    for i in layers:
        q, k, v, attention_out, up, down = (pair(f"{i}.{target}") for target in TARGETS)
        qkv = (torch.cat([q[0], k[0], v[0]]), torch.block_diag(q[1], k[1], v[1]))
        out.append((qkv, attention_out, up, down))
    return out


def encode_pairs(tokenizer: Any, items: Sequence[tuple[str, str]], padded: bool = True) -> Any:
    """The pairs as the check reads them, one sequence each of at most ``MAX_LENGTH`` tokens:
    a padded batch of tensors (training), or with ``padded`` False the lists of token ids."""
    questions, statements = zip(*items)
    # One token type: the encoder is the sentence model's, which only ever saw type 0.
    options = {"truncation": True, "max_length": MAX_LENGTH, "return_token_type_ids": False}
    if not padded:
        return tokenizer(list(questions), list(statements), **options)["input_ids"]
    return tokenizer(list(questions), list(statements), padding=True, return_tensors="pt", **options)


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
