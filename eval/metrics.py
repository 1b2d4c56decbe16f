"""Scoring: answer matching, teacher-forced token accuracy, n-gram entropy, and averaging."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping, Sequence

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_TOKENS = re.compile(r"\w+|[^\w\s]")


def normalize_answer(text: str) -> str:
    """NFKC, casefold, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if ch.isspace() else ch for ch in text if not unicodedata.category(ch).startswith("P"))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def first_line(text: str) -> str:
    """The generation up to its first newline, leading whitespace (and blank lines) skipped."""
    return text.lstrip().split("\n", 1)[0]


def answer_matches(generated: str, answers: str | Iterable[str]) -> bool:
    """True when the generation's first line, normalised, contains a normalised answer as
    a whole-word sequence ("It is Paris." matches "Paris"; "Par" does not match "Paris").
    An answer that normalises to nothing never matches."""
    if isinstance(answers, str):
        answers = (answers,)
    words = normalize_answer(first_line(generated)).split()
    for answer in answers:
        target = normalize_answer(answer).split()
        if target and any(words[i:i + len(target)] == target for i in range(len(words) - len(target) + 1)):
            return True
    return False


def token_accuracy(predicted_ids: Sequence[int], target_ids: Sequence[int]) -> float:
    """Fraction of positions where the predicted token id equals the target's (teacher forcing).

    Accepts lists, numpy arrays or 1-D tensors; the lengths must match and be non-zero.
    """
    predicted, target = _ids(predicted_ids), _ids(target_ids)
    if len(predicted) != len(target):
        raise ValueError(f"token_accuracy: {len(predicted)} predicted ids but {len(target)} target ids; they must align position by position")
    if not target:
        raise ValueError("token_accuracy: no target tokens to score")
    return sum(p == t for p, t in zip(predicted, target)) / len(target)


def _ids(ids: Any) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [int(i) for i in ids]


def ngram_entropy(texts_or_text: str | Iterable[str], weights: Sequence[float] = (2 / 3, 4 / 3), ns: Sequence[int] = (2, 3)) -> float:
    """Fluency as in ROME/EasyEdit: for each text, the mean over ``n`` of ``weight_n`` times the
    entropy (bits) of its n-gram frequency distribution; for several texts, their mean.

    Tokens are words and punctuation marks (a regex stand-in for nltk's word_tokenize).
    An empty text (or a text with fewer than ``n`` tokens, for that ``n``) counts 0.0.
    """
    if len(weights) != len(ns):
        raise ValueError(f"ngram_entropy: {len(weights)} weights for {len(ns)} n-gram sizes")
    if isinstance(texts_or_text, str):
        return _text_entropy(texts_or_text, weights, ns)
    values = [_text_entropy(t, weights, ns) for t in texts_or_text]
    return sum(values) / len(values) if values else 0.0


def _text_entropy(text: str, weights: Sequence[float], ns: Sequence[int]) -> float:
    tokens = _TOKENS.findall(text)
    total = 0.0
    for weight, n in zip(weights, ns):
        counts = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
        size = sum(counts.values())
        entropy = -sum(c / size * math.log2(c / size) for c in counts.values()) if size else 0.0
        total += weight * entropy
    return total / len(ns)


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, float | int]:
    """Per-metric scores in percent from per-probe rows ``{"case_id", "metric", "subtype", "correct"}``.

    KnowEdit style: a case's score on a metric is the mean of ``correct`` over its probes of
    that metric, and the metric's score is the mean of those case scores (so a case with
    many portability probes weighs as much as one with a single probe). Keys: ``<metric>``,
    ``<metric>/<subtype>`` for probes with a subtype (each averaged the same way, within
    the case's probes of that subtype), ``n_cases`` (distinct cases), ``n_probes`` (rows),
    and ``n_cases/<metric>`` and ``n_cases/<metric>/<subtype>``.
    """
    per_case: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    cases: set[str] = set()
    n_probes = 0
    for row in rows:
        correct = float(row["correct"])
        if not 0.0 <= correct <= 1.0:
            raise ValueError(f"summarize: correct must lie in [0, 1], got {correct!r} for case {row['case_id']!r}")
        case_id, metric, subtype = str(row["case_id"]), str(row["metric"]), row.get("subtype") or ""
        cases.add(case_id)
        n_probes += 1
        per_case[metric][case_id].append(correct)
        if subtype:
            per_case[f"{metric}/{subtype}"][case_id].append(correct)
    out: dict[str, float | int] = {}
    for key in sorted(per_case):
        scores = [sum(v) / len(v) for v in per_case[key].values()]
        out[key] = 100.0 * sum(scores) / len(scores)
    out["n_cases"] = len(cases)
    out["n_probes"] = n_probes
    for key in sorted(per_case):
        out[f"n_cases/{key}"] = len(per_case[key])
    return out
