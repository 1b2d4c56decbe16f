"""The scope detector: which stored edit, if any, a question falls under. Every router asks it.

Two pieces:

- :class:`EditScope` judges one question against given edits. For a triple edit it asks
  *is the question about this entity?* (the subject, or a name other edits give it, found
  by :mod:`.entities` in any casing, with accents, possessives, a typo or part of the
  name) and *does it ask this relation of it?* (the question with the entity masked out
  against the edit's prompt, both embedded with the packaged MiniLM). A small head (an
  MLP over those embeddings and match features, 1.8 MB with its relation bank, shipped in ``retrievers/data``
  with its SHA-256, reproduced by ``memedit scope train``) turns them into a calibrated
  probability. Where the question names the subject, the relation check
  (:mod:`.relation_check`, a MiniLM cross-encoder over the masked question and the
  statement, 1.3 MB of adapters shipped beside the head) reads both texts at once and
  moves that probability (``CHECK_WEIGHT``); a pair it turns down is asked again with a
  typical target for the relation (``TYPICAL_TARGET_FIT``). A free-text edit
  is judged on its statement's cosine to the question (``FREE_TEXT_COSINE``) and, where the
  question names one of the statement's names, by the relation check on the two with that
  name masked, as a named subject's edit is, or by their cosine (``NAMED_FREE_TEXT_COSINE``).
- :class:`ScopeDetector` gathers the candidates of a question (the memory's nearest
  edits, plus every active edit whose subject, or free-text statement's name, the question
  names: :class:`.names.NameIndex`) and returns a
  :class:`Decision`: the edits in scope, best first, and a trace record with each
  candidate's score and the reason. The question's vector for retrieval, its masked forms
  and the relation check's pairs go through MiniLM in one pass (the check's adapters run
  beside the embedder's own matrices), so the weights are read once per question.

The statement-only classifiers of :mod:`.scope` (cosine, cross-encoder) plug into the same
detector through :class:`StatementScope`, so that benchmarks compare them on one path.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from memedit.checks import whole_number
from memedit.edit import fill_prompt
from memedit.embeddings import DEFAULT_EMBEDDER
from memedit.errors import ModelPackageError
from memedit.files import read_checked_meta

from .entities import (CACHED_LENGTH, KINDS, answer_clash, relation_clash, Mention, find_mention, fold, mask, mask_prompt, mentions_text, name_likeness,
                       relation_words, statement_names, tokens)
from .names import NameIndex
from .relations import FEATURES as BANK_FEATURES
from .relations import RelationBank, bank_from_arrays, wh_word

HEAD_DIR = Path(__file__).parent / "data"
HEAD_FILE = "scope_head.safetensors"
HEAD_META = "scope_head.json"
TRAIN_COMMAND = "memedit scope train"
# A free-text edit has no subject to find, so the head (trained on triples) does not judge it:
# it is in scope when its statement's MiniLM cosine to the question reaches the F1-max
# threshold calibrated on KnowEdit training pairs (bench/scope.py, the embedding classifier).
FREE_TEXT_COSINE = 0.701
# A triple edit whose subject and target the question does not name is judged the same way,
# on a higher bar: its statement is specific, and a question that shares its relation about
# a neighbouring entity ("Which continent is England in?" for "The United Kingdom is in
# Oceania") comes close to 0.701.
UNNAMED_COSINE = 0.8
# A free-text edit whose entity the question names (a name of its statement, found as a
# triple's subject is) is also in scope when the relation check takes the question and the
# statement with that name masked in both: what is asked about the entity against what is
# said of it. The check's log-odds above its threshold move the detector's threshold (as
# they move a triple's head score, by CHECK_WEIGHT), and the higher of that and the
# statement's cosine score counts. It replaced the two texts' cosine at 0.65, which read
# "Does TripSpindle have offline maps?" far from a statement of its plans and prices. On the
# free-text pairs of the read sets (the held-out read half, fresh2, fresh3, fresh4, the
# earlier set: 231 in scope, 414 not) in scope at 0.65: 161, out 30; by the check: 184, 31.
# On the sets whose mistakes were never read (the held-out unread half, fresh: 62 and 43):
# 40 and 0 against 54 and 1. The check never saw a negation, and turns down "Is the Pellory
# Island ferry running on Sunday?" for "The Pellory Island ferry does not run on Sundays"
# (0.002, masked cosine 0.79), so a masked cosine of NAMED_FREE_TEXT_COSINE or more is in
# scope too: on the read sets 191 in scope and the same 31 out (0.65: 205 and 46; 0.7: 197
# and 37; 0.8: 188 and 31), on the unread ones 56 and 1.
NAMED_FREE_TEXT_COSINE = 0.75
# A question whose kind of answer the edit's target cannot be (``entities.answer_clash``) is
# out of the edit's scope whatever the head says: its score is capped at this share of the threshold.
CLASH_SCORE = 0.5
# Where the question names the subject, the pair's score is the head's log-odds, held within
# ±HEAD_LOGIT_LIMIT, plus CHECK_WEIGHT times the relation check's log-odds above its own
# threshold. The weight was chosen on the half of the held-out wordings whose mistakes are
# read (right / false hits: head alone 81.4 / 8.4 %; weight 1: 84.0 / 5.6; 2: 87.0 / 6.1;
# 3: 89.2 / 6.1; 4: 89.2 / 5.6 with more wrong edits; the check alone loses questions the
# head gets right). The head is sometimes sure past any check (log-odds of 10 and more for
# "What did X study?" against "X graduated from Y", which the check puts at 0.07). Held
# within ±4, the same half went from 91.3 % right / 0.9 % wrong / 3.9 % false hits to
# 91.3 / 1.3 / 2.2, and the earlier set (training data) from 0.6 % false hits to 0.3 %.
# ±3 with weight 2 gave 91.3 / 0.9 / 2.2 there but 2.2 % wrong edits on MQuAKE-hard's hops
# (1.8 % before, 1.8 % at ±4 with weight 3; the target is at most 2 %).
HEAD_LOGIT_LIMIT = 4.0
CHECK_WEIGHT = 3.0
# The check's scores follow the target's words as well as the relation: "X instrument" against
# "X plays the cello" 0.999, against "X plays the theremin" 0.011 (the templates' few example
# targets were learnt with their relation). So where it turns a pair down and the edit's prompt
# is one of the templates' own (the relation bank's best row for it at this cosine or more),
# the pair is asked again with the target replaced by that relation's first example target,
# and the higher score counts. On the read half of the held-out wordings: 92.6 -> 93.9 % right,
# false hits 2.2 % both; at 0.93 the earlier set's false hits went 0.3 -> 0.6 % ("Which
# university did X attend?" for "X studied under Professor Y", whose nearest template relation
# is the school), and at 0.9 the read half's too (2.2 -> 2.8 %).
TYPICAL_TARGET_FIT = 0.97
SCALARS = ("relation", "answer", "clash", "statement", "prompt", *(f"mention_{k}" for k in ("none", *KINDS)), "coverage", "typos", "name_likeness",
           "target_named", "free_text", "question_length", "relation_words", *BANK_FEATURES)


@dataclass
class Verdict:
    """The detector's judgement of one (question, edit) pair."""

    edit: Any
    score: float
    in_scope: bool
    reason: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        edit = self.edit
        out = {"id": getattr(edit, "id", None), "kind": edit.kind, "statement": edit.statement}
        if "cosine" in self.reason:
            out["score"] = self.reason["cosine"]
        return {**out, "scope_score": round(float(self.score), 4), "in_scope": bool(self.in_scope), **self.reason}


@dataclass
class Decision:
    """What the detector decided for a question: ``applied`` (in scope, best first), every
    ``verdict`` (best first), and the record that goes into ``Answer.trace``."""

    question: str
    verdicts: list[Verdict]
    detector: str
    threshold: float

    @property
    def applied(self) -> list[Any]:
        return [v.edit for v in self.verdicts if v.in_scope]

    @property
    def best(self) -> Any | None:
        applied = self.applied
        return applied[0] if applied else None

    def record(self) -> dict[str, Any]:
        return {"step": "scope", "detector": self.detector, "threshold": round(float(self.threshold), 4),
                "edits": [v.record() for v in self.verdicts],
                "decision": getattr(self.best, "id", None)}

    def retrieval_record(self, k: int) -> dict[str, Any]:
        """The trace step of the candidates: the nearest edits (with their cosine), then the named ones."""
        nearest = [v for v in self.verdicts if v.reason.get("retrieval") == "nearest"]
        nearest.sort(key=lambda v: -v.reason["cosine"])
        named = [v for v in self.verdicts if v.reason.get("retrieval") == "named"]
        rows = [{"id": v.edit.id, "kind": v.edit.kind, "statement": v.edit.statement, "score": v.reason["cosine"]}
                for v in nearest]
        rows += [{"id": v.edit.id, "kind": v.edit.kind, "statement": v.edit.statement, "named": v.reason.get("mention")}
                 for v in named]
        return {"step": "retrieve", "k": k, "edits": rows}


# ---------------------------------------------------------------- the head


class Head:
    """MLPs (one hidden layer, ReLU) from a pair's features (the ``columns`` they read, when
    given) to a logit, averaged over the members of the ensemble, in numpy; ``bank`` is the
    relation bank saved with it. Weights of one member are 2-D (``w1``: features x hidden),
    of several stacked on a first axis."""

    def __init__(self, weights: dict[str, np.ndarray], typical_targets: Sequence[str | None] = ()) -> None:
        self.w1 = np.asarray(weights["w1"], np.float32)
        ensemble = self.w1.ndim == 3
        self.w1 = self.w1 if ensemble else self.w1[None]
        self.b1, self.w2, self.b2 = (np.asarray(weights[k], np.float32).reshape(len(self.w1), -1) for k in ("b1", "w2", "b2"))
        self.mean, self.std = weights["mean"].astype(np.float32), weights["std"].astype(np.float32)
        self.columns = weights["columns"].astype(np.int64) if "columns" in weights else None
        self.bank: RelationBank | None = bank_from_arrays(weights)
        # per bank relation, its templates' first example target (saved in the head's meta)
        self.typical_targets = tuple(typical_targets)

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.columns is not None:
            x = x[:, self.columns]
        # matmul rather than einsum: the same sums, an eighth of the time for a question's pairs
        hidden = np.maximum(((x - self.mean) / self.std) @ self.w1 + self.b1[:, None, :], 0.0)
        return ((hidden @ self.w2[:, :, None])[..., 0] + self.b2).mean(0)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(self.logits(x), -30, 30)))


# what was loaded from a folder (heads, relation checks): by folder, the files' identity when
# read (inode, size, mtime of each) and what was read
_heads: dict[str, tuple[tuple, tuple[Head, dict[str, Any]]]] = {}
_checks: dict[str, tuple[tuple, Any]] = {}
_loaded_lock = threading.Lock()


def _once(cache: dict[str, tuple[tuple, Any]], folder: Path, paths: Sequence[Path], read: Callable[[], Any]) -> Any:
    """``read()``, kept in ``cache`` for ``folder`` while the files at ``paths`` stay the same;
    a changed file is read and checked again (a server makes a detector per namespace)."""
    key = str(folder.resolve())
    identity = tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in (p.stat() for p in paths))
    with _loaded_lock:
        if key not in cache or cache[key][0] != identity:
            cache[key] = (identity, read())
        return cache[key][1]


def load_head(folder: str | Path | None = None) -> tuple[Head, dict[str, Any]]:
    """The head in ``folder`` (default: the one shipped with memedit), checked against the
    SHA-256 in its ``scope_head.json``; ModelPackageError when missing or changed. Loaded
    once per process while its files stay the same."""
    folder = Path(folder) if folder is not None else HEAD_DIR
    fix = f"rebuild it with: {TRAIN_COMMAND} --out {folder}"
    meta_path, weights = folder / HEAD_META, folder / HEAD_FILE
    if not meta_path.is_file() or not weights.is_file():
        raise ModelPackageError(f"{folder} holds no scope detector head ({HEAD_META} and {HEAD_FILE}); {fix}")
    head, meta = _once(_heads, folder, (meta_path, weights), lambda: _read_head(meta_path, weights, fix))
    return head, dict(meta)


def load_check(folder: str | Path | None = None) -> Any:
    """The relation check saved beside the head in ``folder`` (default: the shipped one), or
    None when that folder has none (a head trained without it). Loaded once per process
    while its files stay the same; ModelPackageError when damaged."""
    from .relation_check import CHECK_FILE, CHECK_META, RelationCheck

    folder = Path(folder) if folder is not None else HEAD_DIR
    present = [p for p in (folder / CHECK_META, folder / CHECK_FILE) if p.is_file()]
    if not present:
        return None
    fix = f"rebuild it with: {TRAIN_COMMAND} --out {folder}"
    return _once(_checks, folder, present, lambda: RelationCheck.load(folder, fix=fix))


def _read_head(meta_path: Path, weights: Path, fix: str) -> tuple[Head, dict[str, Any]]:
    from safetensors.numpy import load_file

    meta = read_checked_meta(meta_path, weights, fix, "the scope detector head")
    if meta.get("embedder") != DEFAULT_EMBEDDER or meta.get("scalars") != list(SCALARS):
        raise ModelPackageError(f"{meta_path} was made for other features or another embedder; {fix}")
    head = Head(load_file(str(weights)), _typical_targets(meta, meta_path, fix))
    if head.typical_targets and (head.bank is None or len(head.typical_targets) != head.bank.size):
        raise ModelPackageError(f"{meta_path}: bank.typical_targets must list one target per bank relation; {fix}")
    return head, meta


def _typical_targets(meta: dict[str, Any], meta_path: Path, fix: str) -> tuple[str | None, ...]:
    """The head's typical target per bank relation (empty for a head saved before they were)."""
    targets = meta.get("bank", {}).get("typical_targets", [])
    if not isinstance(targets, list) or not all(t is None or isinstance(t, str) for t in targets):
        raise ModelPackageError(f"{meta_path}: bank.typical_targets must be a list of strings or nulls; {fix}")
    return tuple(targets)


# ---------------------------------------------------------------- judging pairs


class EditScope:
    """Judges (question, edit) pairs from the edit's subject, relation and statement.

    ``embedder`` is the memory's (MiniLM); ``folder`` a head saved by ``memedit scope
    train`` (default: the shipped one); ``threshold`` overrides the calibrated one. With
    ``one_pass`` (the default) a question's vector, its masked forms and the relation check's
    pairs share one encoder pass where the check runs on ``embedder`` itself; False runs
    them apart (the same scores, for comparison).
    """

    name = "edit"
    CACHE_SIZE = 50_000

    def __init__(self, embedder: Any = None, folder: str | Path | None = None, threshold: float | None = None,
                 head: Head | None = None, meta: dict[str, Any] | None = None, check: Any = None, one_pass: bool = True) -> None:
        if head is None:
            head, meta = load_head(folder)
            check = load_check(folder) if check is None else check
        self.head, self.meta = head, dict(meta or {})
        #: the relation check (:class:`.relation_check.RelationCheck`), or None: the head alone
        self.check = check
        self.threshold = float(threshold if threshold is not None else self.meta.get("threshold", 0.5))
        self.one_pass = one_pass
        self.bank_holdout: float | None = None  # training only: see RelationBank.scores
        self._embedder = embedder
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._edit_bank: dict[str, np.ndarray] = {}  # an edit's relation text -> its bank scores
        self._lock = threading.Lock()

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from memedit.embeddings import get_embedder

            self._embedder = get_embedder(DEFAULT_EMBEDDER)
        return self._embedder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts``, each computed once (an LRU cache of ``CACHE_SIZE`` texts;
        one call may ask for more texts than that). The edit side of the relation bank is kept
        up to the same number of relation texts."""
        distinct = list(dict.fromkeys(texts))
        with self._lock:
            found = {t: self._cache[t] for t in distinct if t in self._cache}
            for t in found:
                self._cache.move_to_end(t)
        missing = [t for t in distinct if t not in found]
        if missing:
            fresh = self.embedder.encode(missing)
            with self._lock:
                for text, vector in zip(missing, fresh):
                    self._cache[text] = found[text] = vector
                while len(self._cache) > self.CACHE_SIZE:
                    self._cache.popitem(last=False)
        return np.stack([found[t] for t in texts]) if texts else np.zeros((0, self.embedder.dim), np.float32)

    def prepare(self, edits: Sequence[Any]) -> None:
        """Embed the texts of ``edits`` that every question about them needs, in large batches
        (the memory's detector does this when its edits change, not while a question waits)."""
        texts = []
        for e in edits:
            texts += [e.statement, mask_subject(e)]
            if e.subject is not None:
                texts += [mask_prompt(e.prompt), fill_prompt(e.prompt, e.subject)]
            else:
                texts += [mask_statement(e.statement, name) for name in statement_names(e.statement)]
        self.embed(list(dict.fromkeys(texts)))

    def remember(self, text: str, vector: np.ndarray) -> None:
        """Cache an embedding computed elsewhere (the question's, from retrieval)."""
        with self._lock:
            self._cache[text] = np.asarray(vector, dtype=np.float32)

    def judge(self, question: str, edits: Sequence[Any], names: dict[str, list[str]] | None = None) -> list[Verdict]:
        """A verdict per edit, in the given order. ``names`` maps a folded subject to other
        names of that entity (from :class:`NameIndex`)."""
        if not edits:
            return []
        features, reasons = self.features(question, edits, names)
        scores = self.head.probabilities(features)
        for i, edit in enumerate(edits):
            cosine = reasons[i].pop("statement_cosine")
            masked = reasons[i].pop("_masked_cosine", None)
            if not head_judges(features[i]):  # nothing of the edit named, or free text: the statement's cosine
                scores[i] = self.free_text_score(cosine, FREE_TEXT_COSINE if edit.subject is None else UNNAMED_COSINE)
                if masked is not None:  # a free-text edit whose entity the question names (and the check, below)
                    scores[i] = max(scores[i], self.free_text_score(masked, NAMED_FREE_TEXT_COSINE))
            if features[i, _CLASH] > 0.5:  # "When did X marry?" cannot be answered by "X is married to Y"
                reasons[i]["answer_kind"] = "the question asks for a time or number, or a who or where, that the target is not"
            if _ruled_out(reasons[i]):
                scores[i] = min(scores[i], CLASH_SCORE * self.threshold)
        self._check(scores, reasons)
        return [Verdict(e, float(s), bool(s >= self.threshold), r) for e, s, r in zip(edits, scores, reasons)]

    def _check(self, scores: np.ndarray, reasons: list[dict[str, Any]]) -> None:
        """Move the head's scores of the pairs whose question names the subject, or names the
        target and not the subject (the head judges those), by the relation check's, unless a
        rule already ruled the edit out or the edit has no target (an erase, whose statement
        the check was never trained on). A free-text edit whose entity the question names has
        no head score: the check moves the threshold, and the higher of that and its
        statement's cosine score counts."""
        pairs = {i: reason["_pair"] for i, reason in enumerate(reasons) if "_pair" in reason and not _ruled_out(reason)}
        typical = {i: reasons[i]["_typical"] for i in pairs if "_typical" in reasons[i]}
        free = {i for i in pairs if reasons[i]["entity"] == "free text"}
        for reason in reasons:
            reason.pop("_pair", None)
            reason.pop("_typical", None)
        if self.check is None or not pairs:
            return
        checked = dict(zip(pairs, self.check.scores(list(pairs.values()))))
        again = {i: typical[i] for i in typical if checked[i] < self.check.threshold}
        retried = dict(zip(again, self.check.scores(list(again.values())))) if again else {}
        offset = _logit(self.check.threshold)
        for i, p in checked.items():
            reasons[i]["relation_check"] = round(float(p), 4)
            if i in retried:
                reasons[i]["relation_check_typical_target"] = round(float(retried[i]), 4)
                p = max(p, retried[i])
            if i in free:
                scores[i] = max(scores[i], _sigmoid(_logit(self.threshold) + CHECK_WEIGHT * (_logit(p) - offset)))
                continue
            head = float(np.clip(_logit(scores[i]), -HEAD_LOGIT_LIMIT, HEAD_LOGIT_LIMIT))
            scores[i] = _sigmoid(head + CHECK_WEIGHT * (_logit(p) - offset))

    def free_text_score(self, cosine: float, bar: float = FREE_TEXT_COSINE) -> float:
        """A score from a statement's cosine to the question, mapped so that ``bar`` lands on
        the threshold and 1.0 on 1.0."""
        t = self.threshold
        return float(np.clip(t + (cosine - bar) * (1 - t) / (1 - bar), 0.0, 1.0))

    def features(self, question: str, edits: Sequence[Any], names: dict[str, list[str]] | None = None
                 ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The head's input for each (question, edit) and the human-readable reason."""
        found, plans, texts = self.texts(question, edits, names)
        vectors = self.embed(texts)
        q = vectors[0]
        statements = vectors[1 + 3 * len(edits):1 + 4 * len(edits)]
        answers = vectors[1 + 4 * len(edits):]
        asked_bank, edit_bank = self._bank_scores(vectors[1:1 + 3 * len(edits)], [asked for _, asked, _, _ in plans],
                                                  [relation for _, _, relation, _ in plans])
        wh = wh_word(question)
        rows, reasons = [], []
        length = np.log1p(len(found))
        for i, (edit, (mention, asked_text, relation_text, _)) in enumerate(zip(edits, plans)):
            asked, relation, filled = vectors[1 + 3 * i: 4 + 3 * i]
            kind = mention.kind if mention else "none"
            scalars = {
                "relation": float(asked @ relation), "answer": float(asked @ answers[i]),
                "clash": answer_clash(asked_text, edit.target), "statement": float(q @ statements[i]), "prompt": float(q @ filled),
                **{f"mention_{k}": float(kind == k) for k in ("none", *KINDS)},
                "coverage": mention.coverage if mention else 0.0, "typos": float(mention.typos) if mention else 0.0,
                "name_likeness": name_likeness(question, edit.prompt, edit.subject) if edit.subject else 0.0,
                "target_named": float(bool(edit.target) and mentions_text(question, edit.target)),
                "free_text": float(edit.subject is None), "question_length": float(length),
                "relation_words": relation_words(question, edit.prompt) if edit.subject is not None else 0.0,
                **self._bank_features(asked_bank, edit_bank, i, wh),
            }
            rows.append(np.concatenate([asked * relation, np.array([scalars[k] for k in SCALARS], np.float32)]))
            reason: dict[str, Any] = {"entity": kind if edit.subject is not None else "free text",
                                      "relation_score": round(scalars["relation"], 4), "statement_cosine": scalars["statement"]}
            if self.head.bank is not None and edit.subject is not None:
                reason["bank_margin"] = round(scalars["bank_margin"], 4)
            if mention:
                reason["mention"] = question[mention.start:mention.end]
            if mention and edit.subject is None:  # the question and statement, the entity masked in both
                reason["masked_cosine"] = round(scalars["relation"], 4)
                reason["_masked_cosine"] = scalars["relation"]  # judge removes it, and the pair
                reason["_pair"] = check_pair(edit, mention, asked_text, relation_text)
            elif mention:
                pair = check_pair(edit, mention, asked_text, relation_text)
                if pair is not None:
                    reason["_pair"] = pair  # what the relation check reads (judge removes it)
                    typical = typical_statement(None if edit_bank is None else edit_bank[i], pair[1], edit.target,
                                                self.head.typical_targets)
                    if typical is not None:
                        reason["_typical"] = (asked_text, typical)  # asked if the check turns the pair down (judge removes it)
                note_relation_clash(reason, asked_text, edit.prompt)
            elif edit.subject is not None and scalars["target_named"] > 0.5:
                pair = target_pair(question, edit)
                if pair is not None:
                    reason["_pair"] = pair  # the check reads it the other way round (judge removes it)
                    note_relation_clash(reason, pair[0], edit.prompt)  # "the vice head chef Y" for "the head chef of X is Y"
            reasons.append(reason)
        return np.stack(rows).astype(np.float32), reasons

    def _bank_scores(self, pair_vectors: np.ndarray, asked_texts: Sequence[str], relations: Sequence[str]
                     ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per pair, the relation bank's scores of the masked question (``asked_texts``) and of
        the edit's relation text (None without a bank). Each distinct masked question is scored
        once; an edit's side is scored once per relation text and kept; ``bank_holdout`` is
        set while training only, and then nothing is kept."""
        bank = self.head.bank
        if bank is None:
            return None, None
        unique = list(dict.fromkeys(asked_texts))  # most often one masked question for every edit
        where = {text: i for i, text in enumerate(unique)}
        scored = bank.scores(pair_vectors[0::3][[asked_texts.index(text) for text in unique]], self.bank_holdout)
        asked = scored[[where[text] for text in asked_texts]]
        if self.bank_holdout is not None:
            return asked, bank.scores(pair_vectors[1::3], self.bank_holdout)
        with self._lock:
            missing = [i for i, text in enumerate(relations) if text not in self._edit_bank]
        if missing:
            fresh = bank.scores(pair_vectors[1::3][missing])
            with self._lock:
                if len(self._edit_bank) > self.CACHE_SIZE:
                    self._edit_bank.clear()
                for i, row in zip(missing, fresh):
                    self._edit_bank[relations[i]] = row
        with self._lock:
            return asked, np.stack([self._edit_bank[text] for text in relations])

    def _bank_features(self, asked: np.ndarray | None, edit: np.ndarray | None, i: int, wh: int | None) -> dict[str, float]:
        if asked is None or edit is None:  # no bank (see _bank_scores)
            return {name: 0.0 for name in BANK_FEATURES}
        return self.head.bank.features(asked[i], edit[i], wh)

    @staticmethod
    def texts(question: str, edits: Sequence[Any], names: dict[str, list[str]] | None = None) -> tuple[list, list, list[str]]:
        """(question tokens, per edit (mention, masked question, relation text, filled prompt),
        every text to embed: the question, three per edit, the statements, then the
        statements with their subject masked)."""
        found = tokens(question)
        plans = []
        for edit in edits:
            if edit.subject is None:
                mention, name = free_text_mention(question, edit.statement, found)
                if mention is None:
                    plans.append((None, question, edit.statement, edit.statement))
                else:
                    plans.append((mention, mask(question, mention), mask_statement(edit.statement, name), edit.statement))
                continue
            mention = mention_of(question, edit, names)
            asked = mask(question, mention) if mention else question
            plans.append((mention, asked, mask_prompt(edit.prompt), fill_prompt(edit.prompt, edit.subject)))
        texts = [question] + [t for _, asked, relation, filled in plans for t in (asked, relation, filled)]
        return found, plans, texts + [e.statement for e in edits] + [mask_subject(e) for e in edits]

    def embed_question(self, question: str, edits: Sequence[Any], names: dict[str, list[str]] | None = None) -> np.ndarray:
        """The question's vector, computed in one encoder pass with what :meth:`judge` will
        need for ``edits``: the question with each named subject (or free-text edit's entity)
        masked out, and the relation check's scores of the pairs it reads (where the check runs
        on this embedder's encoder)."""
        plans = self.texts(question, edits, names)[1]
        texts = list(dict.fromkeys([question, *(asked for mention, asked, _, _ in plans if mention)]))
        shared = self.one_pass and self.check is not None and self.check.embedder is self.embedder
        pairs = [] if not shared else list(dict.fromkeys(
            pair for edit, (mention, asked, relation, _) in zip(edits, plans)
            if (pair := check_pair(edit, mention, asked, relation))))
        missing = [pair for pair in pairs if not self.check.known(pair)]
        if missing:
            with self._lock:
                fresh = [t for t in texts if t not in self._cache]
            vectors, _ = self.check.embed_and_score(fresh, missing)
            for text, vector in zip(fresh, vectors):
                self.remember(text, vector)
        return self.embed(texts)[0]

    def pair_scores(self, pairs: Sequence[Any]) -> np.ndarray:
        """Scores of labelled pairs (``ScopePair`` with ``edit``), for benchmarks."""
        self.embed(list(dict.fromkeys(t for p in pairs for t in self.texts(p.question, [p.edit])[2])))
        return np.array([self.judge(p.question, [p.edit])[0].score for p in pairs], dtype=np.float32)


_NONE, _TARGET, _FREE, _CLASH = (384 + SCALARS.index(name) for name in ("mention_none", "target_named", "free_text", "clash"))


def check_pair(edit: Any, mention: Mention | None, asked: str, relation: str) -> tuple[str, str] | None:
    """What the relation check reads of an edit whose subject (or, for free text, one of whose
    names) the question names: the question and the statement with that name masked in both
    (``asked`` and, for free text, ``relation``: :meth:`EditScope.texts` masked them). None
    for an unnamed edit, or an erase (no target: the check never saw one, the head judges
    it alone)."""
    if mention is None:
        return None
    if edit.subject is None:
        return asked, relation
    return None if edit.target is None else (asked, mask_subject(edit))


def note_relation_clash(reason: dict[str, Any], asked: str, prompt: str) -> None:
    """Rule the edit out in ``reason`` where ``asked`` (the question, the edit's subject or
    target masked) asks a sibling of the prompt's relation (``entities.relation_clash``)."""
    sibling = relation_clash(asked, prompt)
    if sibling:
        reason["relation_clash"] = f"the question asks for the {sibling[0]}; the edit states the {sibling[1]}"


def target_pair(question: str, edit: Any) -> tuple[str, str] | None:
    """What the relation check reads where the question names the edit's target but not its
    subject: the question and the statement with the target masked in both. An inverse
    question ("Who is the son of Y?" for "The father of X is Y") asks the edit's relation of
    the target, and passes; another question about the target ("Who is Y married to?" for
    "The head chef of X is Y") does not."""
    mention = find_mention(question, edit.target)
    return None if mention is None else (mask(question, mention), mask_statement(edit.statement, edit.target))


def typical_statement(edit_bank: np.ndarray | None, masked: str, target: str, targets: Sequence[str | None]) -> str | None:
    """The masked statement with its target replaced by its relation's typical one (``targets``,
    per bank relation, as the head saved them), where the edit's prompt is a template's
    (``TYPICAL_TARGET_FIT``) and the target is another; else None."""
    if edit_bank is None or len(targets) != len(edit_bank):
        return None
    group = int(np.argmax(edit_bank))
    if edit_bank[group] < TYPICAL_TARGET_FIT or not targets[group]:
        return None
    at = masked.rfind(target)
    if at < 0 or targets[group].casefold() == target.casefold():
        return None
    return masked[:at] + targets[group] + masked[at + len(target):]


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-12), 1 - 1e-12)
    return float(np.log(p / (1 - p)))


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))))


def _ruled_out(reason: dict[str, Any]) -> bool:
    """Whether a rule put the edit out of scope whatever the scores: the kind of answer asked
    (``answer_kind``) or a sibling of its relation (``relation_clash``, "Who is the
    vice-chancellor of X?" for "The chancellor of X is")."""
    return "answer_kind" in reason or "relation_clash" in reason


def head_judges(row: np.ndarray) -> bool:
    """Whether the head judges a pair (a feature row): a triple edit whose subject, or target,
    the question names. Otherwise nothing ties the question to the edit but its words, and
    the statement's cosine decides, as for a free-text edit."""
    return not (row[_FREE] > 0.5 or (row[_NONE] > 0.5 and row[_TARGET] < 0.5))


def mask_subject(edit: Any) -> str:
    """The edit's statement with its subject masked (a free-text statement as it is)."""
    return edit.statement if edit.subject is None else mask_statement(edit.statement, edit.subject)


def free_text_mention(question: str, statement: str, found: Sequence | None = None) -> tuple[Mention | None, str]:
    """(where ``question`` names one of a free-text ``statement``'s names, that name), the
    best-covering one, or (None, "")."""
    found = tokens(question) if found is None else found
    best: tuple[Mention | None, str] = (None, "")
    for name in statement_names(statement):
        mention = find_mention(question, name, found)
        if mention is not None and (best[0] is None or mention.strength > best[0].strength):
            best = (mention, name)
    return best


@lru_cache(maxsize=8192)
def mask_statement(statement: str, name: str) -> str:
    """A statement with ``name`` (its subject, or one of a free-text statement's names)
    masked, as it is where the name is not found. Cached: a question asks it per candidate."""
    mention = find_mention(statement, name)
    return mask(statement, mention) if mention else statement


def mention_of(question: str, edit: Any, names: dict[str, list[str]] | None = None) -> Mention | None:
    """Where ``question`` names the subject of triple ``edit`` (or one of its ``names``), or None."""
    every = (edit.subject, *(names or {}).get(fold(edit.subject), ()))
    if len(question) > CACHED_LENGTH:
        return best_mention(question, tokens(question), every)
    return _best_mention(question, every)


@lru_cache(maxsize=8192)
def _best_mention(question: str, names: tuple[str, ...]) -> Mention | None:
    """:func:`best_mention`, remembered: a question's candidates are matched while it is
    embedded, judged and traced."""
    return best_mention(question, tokens(question), names)


def best_mention(question: str, found: Sequence, names: Iterable[str]) -> Mention | None:
    best = None
    for name in names:
        mention = find_mention(question, name, found)
        if mention is not None and (best is None or mention.strength > best.strength):
            best = mention
    return best


class StatementScope:
    """A statement-only classifier of :mod:`.scope` (``EmbeddingScope``, ``CrossEncoderScope``)
    behind the detector's ``judge``."""

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier
        self.name = classifier.name

    @property
    def threshold(self) -> float:
        return self.classifier.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.classifier.threshold = float(value)

    def judge(self, question: str, edits: Sequence[Any], names: Any = None) -> list[Verdict]:
        scores = self.classifier.scores(question, [e.statement for e in edits]) if edits else []
        return [Verdict(e, float(s), bool(s >= self.threshold)) for e, s in zip(edits, scores)]

    def pair_scores(self, pairs: Sequence[Any]) -> np.ndarray:
        return self.classifier.pair_scores(pairs)


# ---------------------------------------------------------------- candidates from the memory


class ScopeDetector:
    """The one scope decision every router uses.

    ``classifier`` is an :class:`EditScope` (the default) or a :class:`StatementScope`;
    ``k`` the nearest edits retrieved per question, joined by the edits whose subject (or
    free-text statement's name) the question names (``by_name``).
    """

    def __init__(self, memory: Any, classifier: Any = "edit", k: int = 5, by_name: bool | None = None,
                 threshold: float | None = None, min_cosine: float | None = None) -> None:
        whole_number("k", k, 1)
        self.memory = memory
        self.classifier = load_classifier(classifier, embedder=memory.embedder)
        if threshold is not None:
            self.classifier.threshold = float(threshold)
        self.k = k
        # Statement-only classifiers judge what retrieval found, as they always have.
        self.by_name = isinstance(self.classifier, EditScope) if by_name is None else by_name
        self.min_cosine = min_cosine
        self.names = NameIndex()

    @property
    def name(self) -> str:
        return self.classifier.name

    @property
    def threshold(self) -> float:
        return self.classifier.threshold

    def named(self, question: str) -> list[Any]:
        """The active edits whose subject, or free-text statement's name, the question names
        (none unless ``by_name``): the name index's guesses, each confirmed by finding the
        name in the question. Named before the question is embedded, their relation-check
        pairs go through MiniLM in the question's own pass."""
        if not self.by_name:
            return []
        fresh = self.names.refresh(self.memory)
        if fresh and hasattr(self.classifier, "prepare"):
            self._prepare(fresh)
        names = self.names.names
        return [e for e in self.names.named_in(question)
                if (mention_of(question, e, names) if e.subject is not None else free_text_mention(question, e.statement)[0])
                is not None]

    def _prepare(self, edits: Sequence[Any]) -> None:
        """Cache the edit side of every active edit (free-text ones too), so that a question
        never waits for it: the statements' vectors come from the memory, which embedded
        them when they were added; the other texts are embedded here, once."""
        if self.classifier.embedder is self.memory.embedder:
            stored = self.memory.statement_vectors(edits)
            for edit in edits:
                if edit.id in stored:
                    self.classifier.remember(edit.statement, stored[edit.id])
        self.classifier.prepare(edits)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts``: through the edit classifier's cache when it has one, else the memory's embedder."""
        if isinstance(self.classifier, EditScope):
            return self.classifier.embed(texts)
        return self.memory.embedder.encode(list(texts))

    def embed_question(self, question: str, named: Sequence[Any] = ()) -> np.ndarray:
        """The question's vector. The edit classifier computes it in one encoder pass with the
        masked forms and the relation check's scores its verdicts on ``named`` will need."""
        if not isinstance(self.classifier, EditScope):
            return self.memory.embedder.encode_one(question)
        return self.classifier.embed_question(question, named, self.names.names)

    def warm(self, question: str) -> None:
        """Decide ``question`` and drop the decision: the vectors and relation-check scores it
        computed stay in the classifier's caches, so deciding it again (on its turn on the
        model) runs no encoder. Safe from any thread; a server calls it while the question
        waits for the model. The edits may change in between: the later decision reads them
        afresh. Nothing to warm for a classifier without caches."""
        if isinstance(self.classifier, EditScope):
            self.decide(question)

    def candidates(self, question: str, vector: np.ndarray | None = None, named: Sequence[Any] | None = None
                   ) -> tuple[list[Any], dict[str, float | None]]:
        """(candidate edits, their retrieval cosine by id, None for a named one): the ``k`` nearest, then the named ones."""
        named = self.named(question) if named is None else named
        if vector is None:
            vector = self.embed_question(question, named)
        hits = [h for h in self.memory.search_vector(vector, k=self.k)
                if self.min_cosine is None or h.score >= self.min_cosine]
        edits = [h.edit for h in hits]
        cosine = {h.edit.id: float(h.score) for h in hits}
        for edit in named:
            if edit.id not in cosine:
                edits.append(edit)
                cosine[edit.id] = None
        return edits, cosine

    def decide(self, question: str, vector: np.ndarray | None = None, edits: Sequence[Any] | None = None) -> Decision:
        """Judge the question against its candidates (or the given ``edits``), best first."""
        cosine: dict[str, float | None] = {}
        if edits is None:
            named = self.named(question)
            if vector is None:
                vector = self.embed_question(question, named)
            edits, cosine = self.candidates(question, vector, named)
        names = self.names.names if self.by_name else None
        if isinstance(self.classifier, EditScope) and vector is not None:
            self.classifier.remember(question, vector)
        verdicts = self.classifier.judge(question, list(edits), names)
        for v in verdicts:
            key = getattr(v.edit, "id", None)
            if key in cosine:
                v.reason["retrieval"] = "named" if cosine[key] is None else "nearest"
                if cosine[key] is not None:
                    v.reason["cosine"] = round(cosine[key], 4)
        verdicts.sort(key=lambda v: -v.score)
        return Decision(question, verdicts, self.name, self.threshold)


DETECTORS = ("edit", "embedding", "cross-encoder")


def load_classifier(kind: str | Any, embedder: Any = None, path: str | Path | None = None) -> Any:
    """A classifier for :class:`ScopeDetector`: ``"edit"`` (the default detector; ``path`` a
    head folder), ``"embedding"`` or ``"cross-encoder"`` (``path`` its folder), or an object
    with ``judge`` (used as it is) or with ``scores`` (wrapped)."""
    if not isinstance(kind, str):
        return kind if hasattr(kind, "judge") else StatementScope(kind)
    if kind == "edit":
        return EditScope(embedder, folder=path)
    if kind in ("embedding", "cross-encoder"):
        from .scope import load_scope

        return StatementScope(load_scope(kind, embedder=embedder, path=path))
    raise ValueError(f"unknown scope detector {kind!r}; choose one of: {', '.join(DETECTORS)}")
