"""Metrics (answer matching, token accuracy, n-gram entropy, averaging) and the report files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from memedit.eval.metrics import answer_matches, ngram_entropy, normalize_answer, summarize, token_accuracy
from memedit.eval.report import write_report


@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower", "eiffel tower"),
    ("  An   apple,\ta pear!  ", "apple pear"),
    ("ＰＡＲＩＳ", "paris"),              # full-width letters fold under NFKC
    ("Straße", "strasse"),               # casefold, not lower
    ("U.S.", "us"),
    ("Theatre of the Absurd", "theatre of absurd"),  # articles only as whole words
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("generated, answers", [
    ("It is Paris.", ["Paris"]),
    (" paris", "Paris"),
    ("\n\nThe answer is New York City, of course", ["Boston", "New York"]),
    ("Franche-Comté.", ["franche-comté"]),
    ("Owlet moths (Noctuidae)", ["The owlet moths"]),
])
def test_answer_matches(generated, answers):
    assert answer_matches(generated, answers)


@pytest.mark.parametrize("generated, answers", [
    ("Paris", ["Par"]),                       # not a prefix of a word
    ("Parisian food", ["Paris"]),
    ("It is Lyon.\nParis", ["Paris"]),        # only the first line counts
    ("New Amsterdam York", ["New York"]),     # words must be contiguous
    ("The answer is Paris", ["", "the", "..."]),  # answers that normalise to nothing
    ("The answer is Paris", []),
    ("", ["Paris"]),
])
def test_answer_does_not_match(generated, answers):
    assert not answer_matches(generated, answers)


def test_token_accuracy():
    assert token_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert token_accuracy(np.array([5, 6]), np.array([7, 8])) == 0.0
    assert token_accuracy((9,), [9]) == 1.0
    with pytest.raises(ValueError, match="must align"):
        token_accuracy([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="no target"):
        token_accuracy([], [])


def test_ngram_entropy_values():
    # "a b a b": bigrams ab, ba, ab -> p = 2/3, 1/3; trigrams aba, bab -> 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("") == 0.0 and ngram_entropy([]) == 0.0
    assert ngram_entropy(["a b a b", ""]) == pytest.approx(ngram_entropy("a b a b") / 2)
    assert ngram_entropy("x y z", weights=(1.0,), ns=(2,)) == pytest.approx(1.0)


def test_repeated_text_has_lower_entropy_than_varied_text():
    repeated = "the cat the cat the cat the cat the cat the cat"
    varied = "the quick brown fox jumps over a lazy dog near the river bank"
    assert ngram_entropy(repeated) < ngram_entropy(varied)
    assert ngram_entropy([repeated, repeated]) < ngram_entropy([varied, repeated]) < ngram_entropy([varied, varied])


ROWS = [
    # case 1: 3 portability probes (2 Reasoning right, 1 Subject_Aliasing wrong); reliability right
    {"case_id": "c1", "metric": "reliability", "subtype": "", "correct": 1.0},
    {"case_id": "c1", "metric": "portability", "subtype": "Reasoning", "correct": 1.0},
    {"case_id": "c1", "metric": "portability", "subtype": "Reasoning", "correct": 1.0},
    {"case_id": "c1", "metric": "portability", "subtype": "Subject_Aliasing", "correct": 0.0},
    # case 2: 1 portability probe (Reasoning, wrong); reliability wrong; a locality probe
    {"case_id": "c2", "metric": "reliability", "subtype": "", "correct": 0.0},
    {"case_id": "c2", "metric": "portability", "subtype": "Reasoning", "correct": 0.0},
    {"case_id": "c2", "metric": "locality", "subtype": "Relation_Specificity", "correct": 0.5},
]


def test_summarize_averages_within_case_then_over_cases():
    s = summarize(ROWS)
    # portability: c1 = 2/3, c2 = 0 -> mean 1/3 (pooling the 4 probes would give 1/2)
    assert s["portability"] == pytest.approx(100 / 3)
    # Reasoning: c1 = 1, c2 = 0 -> 1/2 (pooling the 3 probes would give 2/3)
    assert s["portability/Reasoning"] == pytest.approx(50.0)
    assert s["portability/Subject_Aliasing"] == pytest.approx(0.0)
    assert s["reliability"] == pytest.approx(50.0)
    assert s["locality"] == pytest.approx(50.0)
    assert "generality" not in s
    assert s["n_cases"] == 2 and s["n_probes"] == 7
    assert s["n_cases/portability"] == 2 and s["n_cases/portability/Subject_Aliasing"] == 1 and s["n_cases/locality"] == 1


def test_summarize_rejects_scores_outside_unit_interval():
    with pytest.raises(ValueError, match="correct"):
        summarize([{"case_id": "c", "metric": "reliability", "subtype": "", "correct": 2}])


def test_write_report(tmp_path):
    summary = {"exact_match": {**summarize(ROWS), "fluency": 5.4321},
               "token_accuracy": {"reliability": 87.5, "n_cases": 2}}
    meta = {"dataset": "zsre", "model": "Qwen/Qwen2.5-0.5B-Instruct", "router": "scope-v1",
            "command": "memedit eval knowedit --limit 2", "seed": 7}
    paths = write_report(tmp_path / "out", summary, meta, ROWS)
    assert set(paths) == {"summary", "cases", "report"} and all(p.is_file() for p in paths.values())

    saved = json.loads(paths["summary"].read_text(encoding="utf-8"))
    assert saved["meta"] == meta and saved["summary"]["exact_match"]["portability/Reasoning"] == pytest.approx(50.0)
    lines = paths["cases"].read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == ROWS

    md = paths["report"].read_text(encoding="utf-8")
    for text in ("zsre", "Qwen/Qwen2.5-0.5B-Instruct", "scope-v1", "`memedit eval knowedit --limit 2`", "exact_match, token_accuracy"):
        assert text in md
    header = next(line for line in md.splitlines() if line.startswith("| Router"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Router", "Scoring", "Reliability", "Generality", "Locality", "Portability",
        "Portability: Reasoning", "Portability: Subject_Aliasing", "Fluency", "n cases"]
    em = next(line for line in md.splitlines() if "| exact_match |" in line)
    assert [c.strip() for c in em.strip("|").split("|")] == ["scope-v1", "exact_match", "50.00", "–", "50.00", "33.33", "50.00", "0.00", "5.43", "2"]
    ta = next(line for line in md.splitlines() if "| token_accuracy |" in line)
    assert [c.strip() for c in ta.strip("|").split("|")] == ["scope-v1", "token_accuracy", "87.50", "–", "–", "–", "–", "–", "–", "2"]


def test_report_with_several_routers(tmp_path):
    summary = {"bm25": {"exact_match": {"reliability": 10.0, "n_cases": 1}},
               "scope": {"exact_match": {"reliability": 90.0, "n_cases": 1}}}
    md = write_report(tmp_path, summary, {}, [])["report"].read_text(encoding="utf-8")
    assert "| bm25 | exact_match | 10.00 |" in md and "| scope | exact_match | 90.00 |" in md
    assert (tmp_path / "cases.jsonl").read_text() == ""
