"""The relation check: does a question, its entity masked, ask for what an edit states?

The scope head judges a question against an edit from embeddings made apart (the masked
question's and the edit prompt's); two texts that share most of their words ("Who is the
CFO of X?" / "The chief financial officer of X is ...") or differ in one word ("the
vice-chancellor of X" / "the chancellor of X") are hard to tell that way. The relation check
reads both at once: the packaged MiniLM as a cross-encoder over ``(question with the entity
masked, statement with the subject masked)``, mean-pooled, then one linear layer.

What it learns is small: rank-8 adapters (LoRA) on each matrix product of MiniLM's six
layers and the linear layer, about 1.3 MB, shipped in ``retrievers/data`` with their SHA-256
and reproduced by ``memedit scope train`` (about 20 minutes on 2 cores, on the head's pairs,
masked, and the same pairs unmasked). When loaded, the adapters are added into a copy of MiniLM's weights, which then
runs like the embedder (bfloat16 where the CPU has AMX).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from memedit.embeddings import MINILM_SHA256, BertForward, matmul_dtype, minilm_path
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
    asks for what the statement states. :meth:`load` opens the shipped one (or a folder)."""

    CACHE_SIZE = 20_000

    def __init__(self, encoder: Any, tokenizer: Any, weight: np.ndarray, bias: float, threshold: float,
                 meta: dict[str, Any] | None = None) -> None:
        self.encoder, self.tokenizer = encoder, tokenizer
        self.weight, self.bias = np.asarray(weight, np.float32), float(bias)
        self.threshold = float(threshold)
        self.meta = dict(meta or {})
        self._cache: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def scores(self, items: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
        """The probability for each ``(masked question, masked statement)``; each pair computed once."""
        with self._lock:
            known = {item: self._cache[item] for item in items if item in self._cache}
        missing = list(dict.fromkeys(item for item in items if item not in known))
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            fresh = self._forward(chunk)
            with self._lock:
                for item, p in zip(chunk, fresh):
                    self._cache[item] = known[item] = float(p)
                while len(self._cache) > self.CACHE_SIZE:
                    self._cache.popitem(last=False)
        return np.array([known[item] for item in items], dtype=np.float32)

    def _forward(self, items: Sequence[tuple[str, str]]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            batch = encode_pairs(self.tokenizer, items, getattr(self.encoder, "pad_to", None))
            hidden = self.encoder(**batch) if isinstance(self.encoder, BertForward) else self.encoder(**batch).last_hidden_state
            pooled = mean_pool(hidden, batch["attention_mask"]).float().numpy()
        return 1.0 / (1.0 + np.exp(-np.clip(pooled @ self.weight + self.bias, -30, 30)))

    @classmethod
    def load(cls, folder: str | Path, fix: str = "") -> "RelationCheck":
        """The check in ``folder``, checked against its SHA-256; ModelPackageError (ending in
        ``fix``, how to rebuild it) when it is missing or damaged."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta_path, weights = folder / CHECK_META, folder / CHECK_FILE
        if not meta_path.is_file() or not weights.is_file():
            raise ModelPackageError(f"{folder} holds no relation check ({CHECK_META} and {CHECK_FILE}); {fix}")
        meta = read_checked_meta(meta_path, weights, fix, "the relation check")
        if meta.get("base_model_sha256") != MINILM_SHA256 or meta.get("rank") != RANK:
            raise ModelPackageError(f"{meta_path} was made for another MiniLM or adapter size; {fix}")
        arrays = load_file(str(weights))
        model, tokenizer = load_minilm()
        merge_adapters(model, arrays)
        model.eval()
        encoder = BertForward.of(model, matmul_dtype()) or model
        return cls(encoder, tokenizer, arrays["classifier.weight"], float(arrays["classifier.bias"]), meta["threshold"], meta)


def encode_pairs(tokenizer: Any, items: Sequence[tuple[str, str]], pad_to: int | None = None) -> dict[str, Any]:
    questions, statements = zip(*items)
    # One token type: the encoder is the sentence model's, which only ever saw type 0.
    return tokenizer(list(questions), list(statements), truncation=True, max_length=MAX_LENGTH, padding=True,
                     pad_to_multiple_of=pad_to, return_token_type_ids=False, return_tensors="pt")


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def merge_adapters(model: Any, arrays: dict[str, np.ndarray]) -> None:
    """Add each adapter (``SCALE * B @ A``) into its matrix."""
    import torch

    with torch.no_grad():
        for name, linear in adapted_layers(model):
            a, b = (torch.from_numpy(arrays[f"{name}.{part}"]) for part in ("A", "B"))
            linear.weight += SCALE * (b @ a)
