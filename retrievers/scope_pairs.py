"""Labelled scope pairs and thresholds: building (question, statement, in scope?) pairs from
evaluation cases, splitting them by statement, calibrating a classifier's threshold on them,
and measuring precision and recall. The classifiers themselves are in :mod:`.scope`; their
training is in :mod:`.scope_training`.
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

import numpy as np

from .scope import ScopeClassifier, ScopePair

IN_SCOPE_METRICS = ("reliability", "generality", "portability")


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


def calibrate(classifier: Any, pairs: Sequence[ScopePair], target_precision: float | None = None) -> float:
    """Set and return ``classifier``'s threshold: the one that maximises F1 on ``pairs`` (or,
    with ``target_precision``, the lowest one whose precision reaches it)."""
    scores = classifier.pair_scores(pairs)
    labels = np.array([p.label for p in pairs])
    classifier.threshold = best_threshold(scores, labels, target_precision)
    return classifier.threshold


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


def plateau_threshold(scores: np.ndarray, labels: np.ndarray, tolerance: float = 0.005) -> float:
    """The middle, in log-odds, of the thresholds whose F1 is within ``tolerance`` of the best.

    A head's held-out scores sit near 0 and 1, so F1 is flat over a wide range of thresholds
    and its arg-max moves from one training run to the next (0.45 in one, 0.91 in the next);
    the middle of the flat part does not, and leaves room on both sides for questions
    unlike the held-out pairs. ``scores`` are probabilities in [0, 1]."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    best_cut = best_threshold(scores, labels)
    best = scope_metrics(scores, labels, best_cut)["f1"]
    grid = np.linspace(0.02, 0.98, 97)
    good = [t for t in grid if scope_metrics(scores, labels, t)["f1"] >= best - tolerance]
    if not good:
        return best_cut
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    low, high = logit(min(good)), logit(max(good))
    return float(1 / (1 + np.exp(-(low + high) / 2)))


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


def split_by_statement(pairs: Sequence[ScopePair], holdout: float, seed: int) -> tuple[list[ScopePair], list[ScopePair]]:
    """(train, held-out): a random ``holdout`` share of the distinct statements, with all their pairs, held out."""
    statements = list(dict.fromkeys(p.statement for p in pairs))
    random.Random(seed).shuffle(statements)
    n = min(len(statements) - 1, math.ceil(holdout * len(statements))) if holdout > 0 else 0
    held = set(statements[:max(0, n)])
    return [p for p in pairs if p.statement not in held], [p for p in pairs if p.statement in held]
