"""Scope questions: edits with the questions a person asks about them, and the detector's score on them.

The file is JSON Lines, one group of edits about one entity a line::

    {"id": "g001",
     "edits": [{"subject": "Marisol Quenby", "prompt": "{} works for", "target": "the Lisbon Botanical Institute"}],
     "questions": [{"q": "Who employs Marisol Quenby?", "edit": 0},       # the group's edit 0 answers it
                   {"q": "When was Marisol Quenby born?", "edit": null}]} # no edit in the file does

A group may have no edits (its questions are about something else altogether).
:func:`evaluate_scope` stores every edit of the file in one fresh memory and asks the
scope detector each question, as a router would: recall is the share of edit questions
for which it picks exactly that edit, ``wrong`` another edit, ``missed`` none; the
false-hit rate is the share of the other questions for which it picks any edit. It also
times the detector's cost on top of retrieval: ``decide`` as a router calls it (the question
embedded with its masked forms, the search, the verdicts) minus embedding and search alone.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from memedit.edit import Edit
from memedit.errors import EditError

from .knowedit import DataError


@dataclass(frozen=True)
class ScopeQuestion:
    text: str
    edit: int | None  # index into the file's edits, or None: no edit covers it
    group: str
    # whether the question's group holds edits: a question no edit covers then most often asks
    # the same entities something else (a neighbour); else it is about something the memory never heard of
    in_edited_group: bool = True


def load_scope_questions(path: str | Path) -> tuple[list[Edit], list[ScopeQuestion]]:
    """(every edit of the file, every question with the index of its edit or None)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file; give a JSONL file of {id, edits, questions} groups")
    edits: list[Edit] = []
    questions: list[ScopeQuestion] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            group = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"is not valid JSON ({exc.msg})", where) from None
        if not isinstance(group, dict) or not isinstance(group.get("questions"), list):
            raise DataError(path, "must be an object with a list of questions", where, "questions")
        first = len(edits)
        for j, fields in enumerate(group.get("edits") or []):
            try:
                edits.append(Edit.from_dict(fields))
            except (EditError, TypeError) as exc:
                raise DataError(path, str(exc), where, f"edits[{j}]") from None
        count = len(edits) - first
        for j, item in enumerate(group["questions"]):
            index = item.get("edit") if isinstance(item, dict) else None
            if not isinstance(item, dict) or not isinstance(item.get("q"), str) or not item["q"].strip():
                raise DataError(path, "must be an object with the question as text in 'q'", where, f"questions[{j}]")
            if index is not None and (not isinstance(index, int) or not 0 <= index < count):
                raise DataError(path, f"must be null or the index of one of the group's {count} edits", where, f"questions[{j}].edit")
            questions.append(ScopeQuestion(item["q"], None if index is None else first + index, str(group.get("id", number)), count > 0))
    return edits, questions


def evaluate_scope(edits: Sequence[Edit], questions: Sequence[ScopeQuestion], classifier: Any, k: int = 5,
                   embedder: Any = None, examples: int = 10) -> dict[str, Any]:
    """The detector's recall, wrong and missed shares, false-hit rate and cost on ``questions``
    with all ``edits`` in one memory; ``examples`` of each kind of mistake are kept."""
    from memedit import Memory
    from memedit.retrievers.detector import ScopeDetector

    with tempfile.TemporaryDirectory() as tmp:
        kwargs = {"embedder": embedder} if embedder is not None else {}
        with Memory(Path(tmp) / "scope.db", namespace="scope-eval", **kwargs) as memory:
            stored = memory.add_many(list(edits))
            detector = ScopeDetector(memory, classifier, k=k)
            counts = {"right": 0, "wrong": 0, "missed": 0, "false_hit": 0, "quiet": 0}
            neighbours = {"questions": 0, "false_hits": 0}  # other questions in a group that holds edits
            mistakes: dict[str, list[dict[str, Any]]] = {"wrong": [], "missed": [], "false_hit": []}
            retrieval_ms, decide_ms = [], []
            detector.decide(questions[0].text) if questions else None  # warm the caches
            for question in questions:
                started = time.perf_counter()
                decision = detector.decide(question.text)  # as a router asks: embedding, search, judging
                middle = time.perf_counter()
                memory.search_vector(memory.embedder.encode_one(question.text), k=k)  # retrieval alone
                ended = time.perf_counter()
                retrieval_ms.append(1000 * (ended - middle))
                decide_ms.append(1000 * ((middle - started) - (ended - middle)))
                best = decision.best
                if question.edit is None:
                    outcome = "quiet" if best is None else "false_hit"
                elif best is None:
                    outcome = "missed"
                else:
                    outcome = "right" if best.id == stored[question.edit].id else "wrong"
                counts[outcome] += 1
                if question.edit is None and question.in_edited_group:
                    neighbours["questions"] += 1
                    neighbours["false_hits"] += outcome == "false_hit"
                if outcome in mistakes and len(mistakes[outcome]) < examples:
                    mistakes[outcome].append({"question": question.text, "expected": None if question.edit is None else stored[question.edit].statement,
                                              "got": None if best is None else best.statement,
                                              "top": decision.verdicts[0].record() if decision.verdicts else None})
            again_ms = []  # each question decided again: the edit detector's vectors and check scores now cached
            for question in questions:
                started = time.perf_counter()
                detector.decide(question.text)
                again_ms.append(1000 * (time.perf_counter() - started))
    edited = counts["right"] + counts["wrong"] + counts["missed"]
    other = counts["false_hit"] + counts["quiet"]
    return {"detector": getattr(classifier, "name", str(classifier)), "threshold": float(classifier.threshold),
            "edits": len(edits), "edit_questions": edited, "other_questions": other,
            "recall": counts["right"] / max(edited, 1), "wrong_edit": counts["wrong"] / max(edited, 1),
            "missed": counts["missed"] / max(edited, 1), "false_hit_rate": counts["false_hit"] / max(other, 1),
            # the other questions split: in a group with edits (neighbours, most often), and the rest
            "neighbour_questions": neighbours["questions"], "neighbour_false_hits": neighbours["false_hits"],
            "unrelated_questions": other - neighbours["questions"],
            "unrelated_false_hits": counts["false_hit"] - neighbours["false_hits"],
            "retrieval_ms_p50": float(np.median(retrieval_ms)) if retrieval_ms else 0.0,
            "detector_ms_p50": float(np.median(decide_ms)) if decide_ms else 0.0,
            "detector_ms_p95": float(np.percentile(decide_ms, 95)) if decide_ms else 0.0,
            # search and verdicts alone: what a question costs once its encoder pass is done
            "decide_again_ms_p50": float(np.median(again_ms)) if again_ms else 0.0,
            "mistakes": mistakes}


def false_hit_split(result: dict[str, Any]) -> str:
    """The false hits of an ``evaluate_scope`` result by where the question stands, as a phrase:
    in a group with edits (most often the same entities asked something else) or without."""
    parts = [f"{result[f'{kind}_false_hits']} of {result[f'{kind}_questions']} in a group {where}"
             for kind, where in (("neighbour", "with edits"), ("unrelated", "without edits")) if result[f"{kind}_questions"]]
    return ", ".join(parts) or "no other questions"
