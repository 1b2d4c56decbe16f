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

import json
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from memedit.embeddings import DEFAULT_EMBEDDER, MINILM_SHA256, BertForward, matmul_dtype, minilm_path
from memedit.errors import ModelPackageError
from memedit.files import quiet_hf, sha256_file, write_atomic

CHECK_FILE = "relation_check.safetensors"
CHECK_META = "relation_check.json"
RANK = 8
SCALE = 2.0  # the adapters' output is multiplied by this (LoRA's alpha / rank)
MAX_LENGTH = 64
# The matrices of each MiniLM layer that get an adapter.
TARGETS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "intermediate.dense", "output.dense")


def pair_texts(question: str, mention: Any, edit: Any) -> tuple[str, str]:
    """What the check reads for a question that names ``edit``'s subject at ``mention``."""
    from .detector import _mask_subject
    from .entities import mask

    return mask(question, mention), _mask_subject(edit)


def _load_minilm() -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_path()
    with quiet_hf():
        return AutoModel.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder))


def _layers(model: Any) -> list[tuple[str, Any]]:
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
            batch = _encode(self.tokenizer, items, getattr(self.encoder, "pad_to", None))
            hidden = self.encoder(**batch) if isinstance(self.encoder, BertForward) else self.encoder(**batch).last_hidden_state
            pooled = _pool(hidden, batch["attention_mask"]).float().numpy()
        return 1.0 / (1.0 + np.exp(-np.clip(pooled @ self.weight + self.bias, -30, 30)))

    @classmethod
    def load(cls, folder: str | Path | None = None) -> "RelationCheck":
        """The check in ``folder`` (default: shipped with memedit), checked against its SHA-256."""
        from safetensors.numpy import load_file

        from .detector import HEAD_DIR, TRAIN_COMMAND, read_checked_meta

        folder = Path(folder) if folder is not None else HEAD_DIR
        fix = f"rebuild it with: {TRAIN_COMMAND} --out {folder}"
        meta_path, weights = folder / CHECK_META, folder / CHECK_FILE
        if not meta_path.is_file() or not weights.is_file():
            raise ModelPackageError(f"{folder} holds no relation check ({CHECK_META} and {CHECK_FILE}); {fix}")
        meta = read_checked_meta(meta_path, weights, fix, "the relation check")
        if meta.get("base_model_sha256") != MINILM_SHA256 or meta.get("rank") != RANK:
            raise ModelPackageError(f"{meta_path} was made for another MiniLM or adapter size; {fix}")
        arrays = load_file(str(weights))
        model, tokenizer = _load_minilm()
        _merge(model, arrays)
        model.eval()
        encoder = BertForward.of(model, matmul_dtype()) or model
        return cls(encoder, tokenizer, arrays["classifier.weight"], float(arrays["classifier.bias"]), meta["threshold"], meta)


def _encode(tokenizer: Any, items: Sequence[tuple[str, str]], pad_to: int | None = None) -> dict[str, Any]:
    questions, statements = zip(*items)
    # One token type: the encoder is the sentence model's, which only ever saw type 0.
    return tokenizer(list(questions), list(statements), truncation=True, max_length=MAX_LENGTH, padding=True,
                     pad_to_multiple_of=pad_to, return_token_type_ids=False, return_tensors="pt")


def _pool(hidden: Any, attention_mask: Any) -> Any:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _merge(model: Any, arrays: dict[str, np.ndarray]) -> None:
    """Add each adapter (``SCALE * B @ A``) into its matrix."""
    import torch

    with torch.no_grad():
        for name, linear in _layers(model):
            a, b = (torch.from_numpy(arrays[f"{name}.{part}"]) for part in ("A", "B"))
            linear.weight += SCALE * (b @ a)


# ---------------------------------------------------------------- training


class _Adapted:
    """MiniLM with trainable adapters beside its frozen matrices, for :func:`train_check`."""

    def __init__(self, seed: int) -> None:
        import torch

        self.model, self.tokenizer = _load_minilm()
        for p in self.model.parameters():
            p.requires_grad_(False)
        generator = torch.Generator().manual_seed(seed)
        self.adapters: dict[str, tuple[Any, Any]] = {}
        for name, linear in _layers(self.model):
            a = torch.nn.Parameter(torch.randn(RANK, linear.in_features, generator=generator) / linear.in_features ** 0.5)
            b = torch.nn.Parameter(torch.zeros(linear.out_features, RANK))
            self.adapters[name] = (a, b)
            linear.register_forward_hook(lambda module, args, out, a=a, b=b: out + SCALE * (args[0] @ a.T) @ b.T)
        self.classifier = torch.nn.Linear(self.model.config.hidden_size, 1)
        torch.nn.init.zeros_(self.classifier.weight)
        torch.nn.init.zeros_(self.classifier.bias)

    def parameters(self) -> list[Any]:
        return [p for pair in self.adapters.values() for p in pair] + list(self.classifier.parameters())

    def logits(self, items: Sequence[tuple[str, str]]) -> Any:
        batch = _encode(self.tokenizer, items)
        return self.classifier(_pool(self.model(**batch).last_hidden_state, batch["attention_mask"])).squeeze(-1)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"{name}.{part}": t.detach().numpy().copy() for name, (a, b) in self.adapters.items() for part, t in (("A", a), ("B", b))}
        out["classifier.weight"] = self.classifier.weight.detach().numpy()[0].copy()
        out["classifier.bias"] = self.classifier.bias.detach().numpy().reshape(()).copy()
        return out


def masked_pairs(pairs: Sequence[Any]) -> list[Any]:
    """The pairs (``ScopePair`` with ``edit``) whose question names the edit's subject, as the
    check reads them; the others are not its to judge."""
    from dataclasses import replace

    from .detector import mention_of

    out = []
    for p in pairs:
        edit = p.edit
        if edit is None or edit.subject is None:
            continue
        mention = mention_of(p.question, edit)
        if mention is not None:
            asked, statement = pair_texts(p.question, mention, edit)
            out.append(replace(p, question=asked, statement=statement))
    return out


def train_check(train_pairs: Sequence[Any], held_pairs: Sequence[Any], out: str | Path, epochs: int = 2,
                batch_size: int = 32, lr: float = 5e-4, seed: int = 0, progress: bool = True) -> RelationCheck:
    """Fit the adapters on ``train_pairs`` (masked, see :func:`masked_pairs`), set the threshold
    at the F1-max on ``held_pairs``, save in ``out`` and return the loaded check."""
    import torch
    from safetensors.numpy import save_file

    from .scope_pairs import best_threshold, scope_metrics
    from .scope_training import fit_pairs

    started = time.perf_counter()
    train_pairs, held_pairs = list(train_pairs), list(held_pairs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapted = _Adapted(seed)
        adapted.model.train()
        losses = fit_pairs(adapted.logits, adapted.parameters(), train_pairs, epochs, batch_size, lr, seed, progress,
                           "training the relation check")
    arrays = adapted.arrays()
    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHECK_META).unlink(missing_ok=True)  # never a loadable half-written check
    save_file(arrays, str(folder / CHECK_FILE))
    meta = {"format": 1, "base_model": DEFAULT_EMBEDDER, "base_model_sha256": MINILM_SHA256, "rank": RANK, "scale": SCALE,
            "targets": list(TARGETS), "max_length": MAX_LENGTH, "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "train_pairs": len(train_pairs), "calibration_pairs": len(held_pairs), "threshold": 0.5,
            "final_loss": round(float(np.mean(losses[-max(1, len(losses) // 10):])), 4),
            "seconds": round(time.perf_counter() - started, 1), "sha256": sha256_file(folder / CHECK_FILE)}
    write_atomic(folder / CHECK_META, (json.dumps(meta, indent=2) + "\n").encode())
    check = RelationCheck.load(folder)  # as a user will run it: adapters added into the matrices
    labels = np.array([p.label for p in held_pairs])
    scores = check.scores([(p.question, p.statement) for p in held_pairs])
    threshold = best_threshold(scores, labels)
    fit = scope_metrics(scores, labels, threshold)
    meta.update(threshold=threshold, calibration={k: round(fit[k], 4) for k in ("precision", "recall", "f1")})
    write_atomic(folder / CHECK_META, (json.dumps(meta, indent=2) + "\n").encode())
    check.threshold, check.meta = threshold, meta
    return check

