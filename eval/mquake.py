"""MQuAKE: multi-hop questions whose answers change when a chain of facts is edited.

``load_mquake(path)`` reads the MQuAKE JSON schema (MQuAKE-CF, -T, -hard) in place: each
record's ``requested_rewrite`` becomes triple edits, ``questions`` the multi-hop
questions, ``new_answer`` (with ``new_answer_alias``) the answer after the edits,
``new_single_hops`` the chain of single-hop questions and answers after the edits.

Scoring as the benchmark defines it (:func:`score_case`): a case counts when ANY of its
asked questions is answered with the new answer or an alias; it counts hop-wise when, in
addition, the chain of intermediate answers matches ``new_single_hops`` hop by hop.
:func:`batches` splits a data set into the k-edited setting's groups.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from memedit.edit import Edit

from .knowedit import DataError, _answers, _check_limit, _text
from .metrics import answer_matches


@dataclass(frozen=True)
class Hop:
    """One single-hop question of a chain and its accepted answers (the first canonical)."""

    question: str
    answers: tuple[str, ...]
    cloze: str = ""


@dataclass(frozen=True)
class MQuAKECase:
    """A multi-hop case: the edits to store, the questions to ask, and the answers."""

    case_id: str
    edits: tuple[Edit, ...]
    questions: tuple[str, ...]
    new_answers: tuple[str, ...]
    old_answers: tuple[str, ...]
    new_hops: tuple[Hop, ...]
    old_hops: tuple[Hop, ...]

    def edit_for_hop(self) -> list[int | None]:
        """For each hop of ``new_hops``, the index of the edit that changes it, or None."""
        out = []
        for hop in self.new_hops:
            match = [i for i, e in enumerate(self.edits) if e.target in hop.answers and _same_subject(e, hop)]
            out.append(match[0] if match else None)
        return out


def _same_subject(edit: Edit, hop: Hop) -> bool:
    return edit.subject.casefold() in (hop.question + " " + hop.cloze).casefold()


def load_mquake(path: str | Path, limit: int | None = None) -> list[MQuAKECase]:
    """The cases of an MQuAKE JSON file, in file order (the first ``limit`` if given).
    Raises :class:`DataError` naming the record and field when the file does not fit."""
    _check_limit(limit)
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file; give the MQuAKE JSON file (e.g. MQuAKE-hard.json)")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(path, f"is not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(records, list):
        raise DataError(path, f"must hold a JSON list of cases, got {type(records).__name__}")
    cases = [_case(path, i, r) for i, r in enumerate(records[:limit] if limit is not None else records)]
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise DataError(path, "case_id values repeat; every case needs its own")
    return cases


def _case(path: Path, index: int, record: Any) -> MQuAKECase:
    where = f"case {index}"
    if not isinstance(record, dict):
        raise DataError(path, f"must be an object, got {type(record).__name__}", where)
    case_id = str(record.get("case_id", index))
    where = f"case {index} (case_id {case_id})"
    rewrites = record.get("requested_rewrite")
    if not isinstance(rewrites, list) or not rewrites:
        raise DataError(path, "must be a non-empty list of edits", where, "requested_rewrite")
    edits = tuple(_edit(path, where, j, r, case_id) for j, r in enumerate(rewrites))
    questions = record.get("questions")
    if not isinstance(questions, list) or not questions or not all(isinstance(q, str) and q.strip() for q in questions):
        raise DataError(path, "must be a non-empty list of question texts", where, "questions")
    new_answers = _answers(path, where, "new_answer", [_text(path, where, record, "new_answer"), record.get("new_answer_alias", [])])
    old_answers = _answers(path, where, "answer", [record.get("answer"), record.get("answer_alias", [])])
    return MQuAKECase(case_id, edits, tuple(q.strip() for q in questions), tuple(new_answers), tuple(old_answers),
                      _hops(path, where, record, "new_single_hops"), _hops(path, where, record, "single_hops"))


def _edit(path: Path, where: str, j: int, rewrite: Any, case_id: str) -> Edit:
    field = f"requested_rewrite[{j}]"
    if not isinstance(rewrite, dict):
        raise DataError(path, "must be an object", where, field)
    subject = _text(path, where, rewrite, "subject", field)
    prompt = _text(path, where, rewrite, "prompt", field)
    if prompt.count("{}") != 1:
        raise DataError(path, f"must contain {{}} once for the subject, got {prompt!r}", where, f"{field}.prompt")
    new, old = rewrite.get("target_new"), rewrite.get("target_true")
    if not isinstance(new, dict) or not isinstance(new.get("str"), str) or not new["str"].strip():
        raise DataError(path, "must be an object with the new answer in 'str'", where, f"{field}.target_new")
    old_text = old.get("str").strip() if isinstance(old, dict) and isinstance(old.get("str"), str) else None
    return Edit(subject=subject, prompt=prompt, target=new["str"].strip(), old_target=old_text or None,
                relation=rewrite.get("relation_id") or None, source=f"mquake:{case_id}")


def _hops(path: Path, where: str, record: dict, key: str) -> tuple[Hop, ...]:
    hops = record.get(key, [])
    if not isinstance(hops, list):
        raise DataError(path, "must be a list of single-hop questions", where, key)
    out = []
    for j, hop in enumerate(hops):
        field = f"{key}[{j}]"
        if not isinstance(hop, dict):
            raise DataError(path, "must be an object", where, field)
        answers = _answers(path, where, field, [_text(path, where, hop, "answer", field), hop.get("answer_alias", [])])
        out.append(Hop(_text(path, where, hop, "question", field), tuple(answers), str(hop.get("cloze", ""))))
    return tuple(out)


# -- the k-edited setting -----------------------------------------------------------------
def batch_size(k: int | str, total: int) -> int:
    """The number of cases per batch for ``k`` (a positive number, or ``"all"``)."""
    if k == "all":
        return max(total, 1)
    if isinstance(k, str) and k.isdigit():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive whole number or 'all', got {k!r}")
    return k


def batches(cases: Sequence[MQuAKECase], k: int | str) -> list[list[MQuAKECase]]:
    """Consecutive groups of ``k`` cases (``"all"``: one group). The memory of a group holds
    the edits of all its cases, as in the k-edited setting of MQuAKE."""
    size = batch_size(k, len(cases))
    return [list(cases[i:i + size]) for i in range(0, len(cases), size)]


# -- scoring ------------------------------------------------------------------------------
def chain_matches(chain: Sequence[str], hops: Sequence[Hop]) -> bool:
    """True when the intermediate answers match the hops one by one (same number of hops)."""
    return len(chain) == len(hops) and all(answer_matches(a, h.answers) for a, h in zip(chain, hops))


def score_case(case: MQuAKECase, answers: Sequence[str], chains: Sequence[Sequence[str]] = ()) -> dict[str, bool]:
    """``correct``: any answer matches the new answer or an alias; ``hop_correct``: an answer
    that is correct comes with a chain matching ``new_single_hops``; ``old``: an answer
    still gives the pre-edit answer."""
    correct = [answer_matches(a, case.new_answers) for a in answers]
    hop = [ok and i < len(chains) and chain_matches(chains[i], case.new_hops) for i, ok in enumerate(correct)]
    return {"correct": any(correct), "hop_correct": any(hop),
            "old": any(answer_matches(a, case.old_answers) for a in answers) if case.old_answers else False}
