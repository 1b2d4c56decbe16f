"""Scope classifiers: does a question fall under a stored edit?

SERAC (and PokeMQA's detector) route a question to the counterfactual path only when a
scope classifier says it is covered by an edit. Two classifiers share one protocol
(``name``, ``threshold``, ``scores(question, statements)``, ``in_scope(...)``):

- :class:`EmbeddingScope`: cosine similarity of MiniLM embeddings, with a threshold
  calibrated on labelled pairs (F1-max, or the lowest one reaching a target precision).
- :class:`CrossEncoderScope`: the packaged MiniLM fine-tuned as a cross-encoder (one
  logit, sigmoid) on KnowEdit-style pairs built by :func:`scope_pairs`: an edit's
  statement with its own reliability, generality and portability prompts is in scope;
  with its locality prompts (hard negatives) and other cases' prompts (easy negatives)
  it is out.

A trained cross-encoder lives in a folder (model, tokenizer, ``scope.json``); ``load``
checks the weights against the SHA-256 recorded at training time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from memedit.embeddings import DEFAULT_EMBEDDER, MINILM_SHA256, minilm_path, sha256_file
from memedit.errors import ModelPackageError

SCOPE_FILE = "scope.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
DEFAULT_MAX_LENGTH = 64
RETRAIN_COMMAND = "python bench/scope.py --out {folder}"
IN_SCOPE_METRICS = ("reliability", "generality", "portability")


# ---------------------------------------------------------------- training pairs


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


def scope_pairs(cases: Sequence[Any], negatives_per_case: int = 2, seed: int = 0,
                relation_negatives_per_case: int = 2) -> list[ScopePair]:
    """Labelled pairs from evaluation cases (``memedit.eval.cases.Case``), deterministic for a seed.

    For each case: its reliability, generality and portability prompts with its edit
    statement are positives; its locality prompts with its statement are hard negatives
    (same subject, other relation); ``relation_negatives_per_case`` reliability prompts of
    other cases with the same relation and another subject are hard negatives too (kind
    ``same_relation``: without them a classifier learns to match the relation alone);
    ``negatives_per_case`` prompts drawn from other cases (of another subject) with its
    statement are easy negatives.
    """
    cases = list(cases)
    rng = random.Random(seed)
    by_relation: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        if case.edit.relation:
            by_relation.setdefault(case.edit.relation.casefold(), []).append(i)
    pairs: list[ScopePair] = []
    for i, case in enumerate(cases):
        statement = case.edit.statement
        for probe in case.probes:
            label = int(probe.metric in IN_SCOPE_METRICS)
            pairs.append(ScopePair(probe.prompt, statement, label, probe.metric, case.edit))
        subject = _subject_key(case)
        peers = [j for j in by_relation.get((case.edit.relation or "").casefold(), [])
                 if j != i and _subject_key(cases[j]) != subject]
        for j in rng.sample(peers, min(relation_negatives_per_case, len(peers))):
            prompts = [p.prompt for p in cases[j].by_metric("reliability")] or [cases[j].edit.statement]
            pairs.append(ScopePair(prompts[0], statement, 0, "same_relation", case.edit))
        for j in _other_cases(cases, i, negatives_per_case, rng):
            prompts = [p.prompt for p in cases[j].probes] or [cases[j].edit.statement]
            pairs.append(ScopePair(rng.choice(prompts), statement, 0, "unrelated", case.edit))
    return pairs


def _other_cases(cases: list[Any], i: int, k: int, rng: random.Random) -> list[int]:
    """Up to ``k`` distinct random indices of cases other than ``i`` and about another subject."""
    subject = _subject_key(cases[i])
    chosen: list[int] = []
    for _ in range(20 * k):
        if len(chosen) >= k or len(cases) < 2:
            break
        j = rng.randrange(len(cases))
        if j == i or j in chosen or (subject is not None and _subject_key(cases[j]) == subject):
            continue
        chosen.append(j)
    return chosen


def _subject_key(case: Any) -> str | None:
    subject = getattr(case.edit, "subject", None)
    return " ".join(subject.casefold().split()) if subject else None


# ---------------------------------------------------------------- the protocol


@runtime_checkable
class ScopeClassifier(Protocol):
    """What a router needs from a scope classifier."""

    name: str
    threshold: float

    def scores(self, question: str, statements: list[str]) -> np.ndarray: ...

    def in_scope(self, question: str, statements: list[str]) -> np.ndarray: ...


class _Scope:
    """Shared behaviour: thresholding, pair scoring and calibration."""

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

    def calibrate(self, pairs: Sequence[ScopePair], target_precision: float | None = None) -> float:
        """Set and return the threshold that maximises F1 on ``pairs`` (or, with
        ``target_precision``, the lowest threshold whose precision reaches it)."""
        scores = self.pair_scores(pairs)
        labels = np.array([p.label for p in pairs])
        self.threshold = best_threshold(scores, labels, target_precision)
        return self.threshold


def best_threshold(scores: np.ndarray, labels: np.ndarray, target_precision: float | None = None) -> float:
    """The F1-maximising threshold (``score >= threshold`` is in scope), midway between
    the last score kept and the next one; with ``target_precision``, the lowest threshold
    whose precision reaches it. ValueError when there is no positive or no threshold
    reaches the target."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(scores) != len(labels) or not len(scores):
        raise ValueError(f"need as many labels as scores, and at least one; got {len(scores)} scores, {len(labels)} labels")
    positives = int(labels.sum())
    if positives == 0:
        raise ValueError("calibration needs at least one in-scope pair (label 1)")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    cuts = np.nonzero(np.r_[s[1:] != s[:-1], True])[0]  # last position of each distinct score
    tp = np.cumsum(y)[cuts]
    kept = cuts + 1
    precision = tp / kept
    if target_precision is None:
        k = int(np.argmax(2 * tp / (kept + positives)))
    else:
        reached = np.nonzero(precision >= target_precision)[0]
        if not len(reached):
            raise ValueError(f"no threshold reaches precision {target_precision}; the best is {precision.max():.3f}")
        k = int(reached[-1])
    cut = cuts[k]
    if cut == len(s) - 1:
        return float(s[cut])
    middle = (s[cut] + s[cut + 1]) / 2
    return float(middle if middle > s[cut + 1] else s[cut])


def precision_recall(classifier: ScopeClassifier, pairs: Sequence[ScopePair]) -> dict[str, float]:
    """Precision, recall and F1 of ``classifier`` at its threshold on labelled pairs."""
    scores = classifier.pair_scores(pairs) if hasattr(classifier, "pair_scores") else \
        np.array([classifier.scores(p.question, [p.statement])[0] for p in pairs])
    return scope_metrics(scores, np.array([p.label for p in pairs]), classifier.threshold)


def scope_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of calling ``scores >= threshold`` in scope, against 0/1 ``labels``."""
    predicted, labels = np.asarray(scores) >= threshold, np.asarray(labels)
    tp = int(np.sum(predicted & (labels == 1)))
    fp = int(np.sum(predicted & (labels == 0)))
    fn = int(np.sum(~predicted & (labels == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "n": int(len(labels)), "threshold": float(threshold)}


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


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Offline, without load reports or progress bars (the new classifier head is expected)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _load_model(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with _quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model.eval()
    return model, tokenizer


class CrossEncoderScope(_Scope):
    """The packaged MiniLM fine-tuned to read (question, statement) together and give the
    probability that the question is in the statement's scope. Make one with
    :meth:`train`, open a saved one with :meth:`load`."""

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

    # -- training --------------------------------------------------------------------

    @classmethod
    def train(cls, pairs: Sequence[ScopePair], out_dir: str | Path, epochs: int = 2, batch_size: int = 32,
              lr: float = 3e-5, seed: int = 0, progress: bool = True, max_length: int = DEFAULT_MAX_LENGTH,
              holdout: float = 0.1) -> "CrossEncoderScope":
        """Fine-tune a cross-encoder from the packaged MiniLM on ``pairs`` and save it in ``out_dir``.

        A ``holdout`` share of the statements (with all their pairs) is kept out of
        training; the threshold is the F1-max one on those pairs (on the training pairs
        when the held-out ones lack a class). Deterministic for a seed on one machine.
        """
        import torch

        pairs = list(pairs)
        if not any(p.label == 1 for p in pairs) or not any(p.label == 0 for p in pairs):
            raise ValueError("training needs both in-scope (label 1) and out-of-scope (label 0) pairs")
        train_pairs, held = split_by_statement(pairs, holdout, seed)
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, tokenizer = _load_model(minilm_path())
            scope = cls(model, tokenizer, max_length=max_length)
            losses = scope._fit(train_pairs, epochs, batch_size, lr, seed, progress)
        seconds = time.perf_counter() - started
        calibration = held if {p.label for p in held} == {0, 1} else train_pairs
        scores, labels = scope.pair_scores(calibration), np.array([p.label for p in calibration])
        scope.threshold = best_threshold(scores, labels)
        fit = scope_metrics(scores, labels, scope.threshold)
        scope.meta = {
            "format": FORMAT_VERSION, "threshold": scope.threshold, "max_length": max_length,
            "train_pairs": len(train_pairs), "calibration_pairs": len(calibration),
            "calibrated_on": "held-out" if calibration is held else "train",
            "calibration": {k: fit[k] for k in ("precision", "recall", "f1")},
            "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "final_loss": float(np.mean(losses[-max(1, len(losses) // 10):])), "train_seconds": round(seconds, 1),
            "base_model": DEFAULT_EMBEDDER, "base_model_sha256": MINILM_SHA256,
        }
        scope.save(out_dir)
        return scope

    def _fit(self, pairs: list[ScopePair], epochs: int, batch_size: int, lr: float, seed: int, progress: bool) -> list[float]:
        """The training loop: AdamW, linear warm-up and decay, binary cross-entropy on the logit."""
        import torch
        from tqdm import tqdm

        batches = [b for epoch in range(epochs) for b in _batches(pairs, batch_size, seed + epoch)]
        # The word-embedding table (half the weights) stays as pretrained: cheaper steps, less overfitting.
        self.model.get_input_embeddings().weight.requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        warmup = max(1, len(batches) // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, max(0.0, (len(batches) - step) / max(1, len(batches) - warmup))))
        self.model.train()
        losses: list[float] = []
        with tqdm(total=len(batches), desc="training scope cross-encoder", unit="batch", file=sys.stderr,
                  disable=not progress) as bar:
            for batch in batches:
                logits = self.model(**self._encode([(p.question, p.statement) for p in batch])).logits.squeeze(-1)
                target = torch.tensor([float(p.label) for p in batch])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
                bar.update()
        self.model.eval()
        return losses

    # -- saving and loading ------------------------------------------------------------

    def save(self, out_dir: str | Path) -> Path:
        """Write model, tokenizer and ``scope.json`` (with the weights' SHA-256) into ``out_dir``."""
        folder = Path(out_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SCOPE_FILE).unlink(missing_ok=True)  # a folder without scope.json is never loadable half-written
        with _quiet_transformers():
            self.model.save_pretrained(str(folder))
            self.tokenizer.save_pretrained(str(folder))
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise ModelPackageError(f"saving the scope classifier did not write {weights}")
        meta = {**self.meta, "threshold": self.threshold, "max_length": self.max_length,
                "weights_file": WEIGHTS_FILE, "weights_sha256": sha256_file(weights)}
        tmp = folder / (SCOPE_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        tmp.replace(folder / SCOPE_FILE)
        self.folder, self.meta = folder, meta
        return folder

    @classmethod
    def load(cls, out_dir: str | Path) -> "CrossEncoderScope":
        """Open a cross-encoder saved by :meth:`train`; ModelPackageError when it is missing or damaged."""
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
    digest = sha256_file(weights)
    if digest != expected:
        raise ModelPackageError(f"{weights} has SHA-256 {digest}, but {SCOPE_FILE} expects {expected}: "
                                f"the scope classifier in {folder} is damaged or was changed; {fix}")
    return meta


def split_by_statement(pairs: Sequence[ScopePair], holdout: float, seed: int) -> tuple[list[ScopePair], list[ScopePair]]:
    """(train, held-out): a random ``holdout`` share of the distinct statements, with all their pairs, held out."""
    statements = list(dict.fromkeys(p.statement for p in pairs))
    random.Random(seed).shuffle(statements)
    n = min(len(statements) - 1, math.ceil(holdout * len(statements))) if holdout > 0 else 0
    held = set(statements[:max(0, n)])
    return [p for p in pairs if p.statement not in held], [p for p in pairs if p.statement in held]


def _batches(pairs: list[ScopePair], batch_size: int, seed: int) -> list[list[ScopePair]]:
    """Shuffled batches of similar length (less padding), in a shuffled order; deterministic for a seed."""
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    batches: list[list[ScopePair]] = []
    pool = batch_size * 32
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: len(pairs[i].question) + len(pairs[i].statement))
        batches += [[pairs[i] for i in chunk[j:j + batch_size]] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches

