"""Data loaders: KnowEdit JSON files (the real ones, read in place) and our probe JSONL."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from memedit.eval.cases import METRICS
from memedit.eval.knowedit import (
    DataError,
    detect_dataset,
    load_knowedit,
    load_probe_jsonl,
)

from memedit.errors import MemeditError
from memedit.model_files import data_dir

DATA = data_dir()
ZSRE = DATA / "knowedit" / "ZsRE" / "ZsRE-test-all.json"
WIKI_CF = DATA / "knowedit" / "wiki_counterfact" / "train_cf.json"
needs_data = pytest.mark.skipif(not (ZSRE.is_file() and WIKI_CF.is_file()), reason=f"KnowEdit files not under {DATA} (set MEMEDIT_DATA)")


@pytest.fixture(scope="module")
def zsre():
    return load_knowedit(ZSRE)


@pytest.fixture(scope="module")
def wiki_cf():
    return load_knowedit(WIKI_CF)


def probes(case, metric):
    return [(p.prompt, p.answers, p.subtype) for p in case.by_metric(metric)]


# ---------------------------------------------------------------- KnowEdit, real files


@needs_data
def test_counts_ids_and_dataset_detection(zsre, wiki_cf):
    assert len(zsre) == 1304 and len(wiki_cf) == 1428
    assert [c.case_id for c in zsre[:2]] == ["zsre-0", "zsre-1"]
    assert wiki_cf[-1].case_id == "wiki_counterfact-1427"
    assert len({c.case_id for c in zsre + wiki_cf}) == 1304 + 1428
    assert detect_dataset(ZSRE) == "zsre" and detect_dataset(WIKI_CF) == "wiki_counterfact"


@needs_data
def test_every_edit_is_a_modify_triple_with_one_placeholder(zsre, wiki_cf):
    for case in zsre + wiki_cf:
        edit = case.edit
        assert edit.is_triple and edit.kind == "modify", case.case_id
        assert edit.prompt.count("{}") == 1, case.case_id
        # the template filled with the subject gives back the reliability prompt
        assert edit.prompt.replace("{}", edit.subject) == case.by_metric("reliability")[0].prompt, case.case_id
        assert case.by_metric("reliability")[0].answers == (edit.target,)


@needs_data
def test_zsre_record_0_fields(zsre):
    case = zsre[0]
    edit = case.edit
    assert (edit.subject, edit.prompt, edit.target, edit.old_target) == (
        "Epaspidoceras", "Which family does {} belong to?", "Noctuidae", "Aspidoceratidae")
    assert edit.source == "knowedit:zsre:0"
    assert probes(case, "generality") == [("What family are Epaspidoceras?", ("Noctuidae",), "")]
    assert probes(case, "portability") == [("What is the common name for the family Epaspidoceras belongs to?", ("Owlet moths",), "Reasoning")]
    assert probes(case, "locality") == [("The taxon rank of Epaspidoceras is", ("genus",), "Relation_Specificity"),
                                        ("Epaspidoceras taxon rank", ("genus",), "Relation_Specificity")]


@needs_data
def test_zsre_ground_truth_list_and_padded_fields(zsre):
    # record 32: two ground truths, the first becomes old_target
    assert zsre[32].edit.old_target == "Minnesota Wild"
    # record 413: subject "Angora goat " and target " Angora" carry stray spaces in the file
    case = zsre[413]
    assert (case.edit.subject, case.edit.prompt, case.edit.target) == ("Angora goat", "What is {} named after?", "Angora")
    assert probes(case, "portability") == [("What is Ankara goat named after?", ("Angora",), "Subject_Aliasing")]


@needs_data
def test_wiki_counterfact_record_0_fields(wiki_cf):
    case = wiki_cf[0]
    edit = case.edit
    assert (edit.subject, edit.target, edit.old_target) == ("Goursez Vreizh", "Franche-Comté", "France")
    assert edit.prompt == "The name of the country which {} is associated with is"
    assert case.by_metric("generality") == []  # no rephrase_prompt in this data set
    assert probes(case, "portability") == [
        ("The name of the capital city of the country Goursez Vreizh is associated with is", ("Besançon",), "Reasoning"),
        ("The name of the country which Gorsedd of Brittany is associated with is", ("Franche-Comté",), "Subject_Aliasing")]
    assert probes(case, "locality") == [("The name of the founder of Goursez Vreizh is", ("Jean Le Fustec",), "Relation_Specificity")]


@needs_data
def test_wiki_counterfact_empty_ground_truths(wiki_cf):
    assert wiki_cf[630].edit.old_target is None  # ground_truth "" in the file
    forget = [p for p in wiki_cf[326].by_metric("locality") if p.subtype == "Forgetfulness"]
    assert len(forget) == 1 and forget[0].answers == ()


@needs_data
def test_probe_totals_by_metric_and_subtype(zsre, wiki_cf):
    z = Counter(p.metric for c in zsre for p in c.probes)
    assert z == {"reliability": 1304, "generality": 1304, "portability": 1304, "locality": 2608}
    w = Counter((p.metric, p.subtype) for c in wiki_cf for p in c.probes)
    assert w[("locality", "Forgetfulness")] == 782 and w[("generality", "")] == 0
    assert {s for (m, s) in w if m == "portability"} == {"Reasoning", "Subject_Aliasing", "Logical_Generalization"}
    assert all(p.answers for c in zsre + wiki_cf for p in c.probes if p.metric != "locality")


@needs_data
def test_limit_and_explicit_dataset(zsre):
    first = load_knowedit(ZSRE, limit=3)
    assert [c.case_id for c in first] == ["zsre-0", "zsre-1", "zsre-2"]
    assert first == zsre[:3]
    assert load_knowedit(ZSRE, limit=0) == []
    renamed = load_knowedit(ZSRE, limit=1, dataset="zsre_test")
    assert renamed[0].case_id == "zsre_test-0" and renamed[0].edit.source == "knowedit:zsre_test:0"
    with pytest.raises(ValueError, match="limit"):
        load_knowedit(ZSRE, limit=-1)


# ---------------------------------------------------------------- KnowEdit, made-up files

RECORD = {"subject": "Paris", "prompt": "paris is the capital of", "target_new": "Italy", "ground_truth": [["France", "FR"]],
          "portability": {"Reasoning": [{"prompt": "The language of Paris is", "ground_truth": [["Italian"], "italiano"]}]},
          "locality": {"Relation_Specificity": [{"prompt": "Paris lies on the", "ground_truth": "Seine"}]}}


def write_json(tmp_path, data, name="zsre_small.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_case_insensitive_subject_nested_answers_and_free_text_fallback(tmp_path):
    absent = {**RECORD, "subject": "Lutetia"}
    cases = load_knowedit(write_json(tmp_path, [RECORD, absent]))
    triple = cases[0].edit
    assert (triple.prompt, triple.subject, triple.old_target) == ("{} is the capital of", "Paris", "France")
    assert probes(cases[0], "portability") == [("The language of Paris is", ("Italian", "italiano"), "Reasoning")]
    free = cases[1].edit
    assert not free.is_triple and free.statement == "paris is the capital of Italy" and free.kind == "modify"
    assert free.source == "knowedit:zsre:1"


@pytest.mark.parametrize("content, message", [
    pytest.param(None, "no such file", id="missing-file"),
    pytest.param("{not json", "not valid JSON", id="bad-json"),
    pytest.param(json.dumps({"subject": "x"}), "JSON list", id="not-a-list"),
])
def test_bad_knowedit_files(tmp_path, content, message):
    path = tmp_path / "zsre.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        load_knowedit(path)
    assert str(path) in str(info.value) and isinstance(info.value, MemeditError)


@pytest.mark.parametrize("field", ["subject", "prompt", "target_new"])
def test_knowedit_record_missing_a_field_names_record_and_field(tmp_path, field):
    bad = {k: v for k, v in RECORD.items() if k != field}
    with pytest.raises(DataError, match=f"record 1: {field}: is missing") as info:
        load_knowedit(write_json(tmp_path, [RECORD, bad]))
    assert info.value.field == field and info.value.where == "record 1"


def test_knowedit_bad_probe_names_its_path(tmp_path):
    bad = {**RECORD, "portability": {"Reasoning": [{"prompt": "Q?", "ground_truth": 7}]}}
    with pytest.raises(DataError, match=r"record 0: portability\.Reasoning\[0\]\.ground_truth"):
        load_knowedit(write_json(tmp_path, [bad]))
    no_answer = {**RECORD, "portability": {"Reasoning": [{"prompt": "Q?", "ground_truth": ""}]}}
    with pytest.raises(DataError, match="has no answer"):
        load_knowedit(write_json(tmp_path, [no_answer]))


def test_unknown_dataset_name_needs_argument(tmp_path):
    path = write_json(tmp_path, [RECORD], name="edits.json")
    with pytest.raises(DataError, match="dataset="):
        load_knowedit(path)
    assert load_knowedit(path, dataset="mine")[0].case_id == "mine-0"


# ---------------------------------------------------------------- probe JSONL

GOOD = {"id": "fr", "edit": {"subject": "France", "prompt": "The capital of {} is", "target": "Lyon", "old_target": "Paris"},
        "probes": [{"prompt": "The capital of France is", "answer": "Lyon", "metric": "reliability"},
                   {"prompt": "France's capital is", "answers": ["Lyon", "Lugdunum"], "metric": "generality"},
                   {"prompt": "The capital of Italy is", "answers": ["Rome"], "metric": "locality", "subtype": "Relation_Specificity"}]}


def write_jsonl(tmp_path, lines):
    path = tmp_path / "probes.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def test_probe_jsonl_round_trip(tmp_path):
    free = {"edit": {"statement": "The office closes at 6 pm."},
            "probes": [{"prompt": "When does the office close?", "answer": "6 pm", "metric": "portability", "subtype": "Reasoning"}]}
    cases = load_probe_jsonl(write_jsonl(tmp_path, [GOOD, "", free, {"edit": {"statement": "A distractor."}}]))
    assert [c.case_id for c in cases] == ["fr", "probes-3", "probes-4"]
    fr = cases[0]
    assert (fr.edit.kind, fr.edit.target, fr.edit.old_target) == ("modify", "Lyon", "Paris")
    assert [(p.metric, p.answers, p.subtype) for p in fr.probes] == [
        ("reliability", ("Lyon",), ""), ("generality", ("Lyon", "Lugdunum"), ""), ("locality", ("Rome",), "Relation_Specificity")]
    assert cases[1].probes[0].subtype == "Reasoning" and not cases[1].edit.is_triple
    assert cases[2].probes == ()
    assert [c.case_id for c in load_probe_jsonl(write_jsonl(tmp_path, [GOOD, "", free]), limit=1)] == ["fr"]


def probe(**changes):
    return {**GOOD, "probes": [{**GOOD["probes"][0], **changes}]}


def without(mapping, key):
    return {k: v for k, v in mapping.items() if k != key}


BAD_LINES = [
    pytest.param("{oops", "", "not valid JSON", id="bad-json"),
    pytest.param("[1, 2]", "", "JSON object", id="not-an-object"),
    pytest.param({**GOOD, "probs": []}, "probs", "not a case field", id="unknown-case-key"),
    pytest.param(without(GOOD, "edit"), "edit", "is missing", id="no-edit"),
    pytest.param({**GOOD, "edit": {"subject": "France", "prompt": "The capital of France is", "target": "Lyon"}}, "edit.prompt", "exactly once", id="edit-invalid"),
    pytest.param({**GOOD, "edit": {"subject": "France", "prompt": "{} is", "target": "Lyon", "colour": 1}}, "edit.colour", "not an edit field", id="edit-unknown-field"),
    pytest.param({**GOOD, "probes": {"prompt": "x"}}, "probes", "list", id="probes-not-list"),
    pytest.param(probe(metric="accuracy"), "probes[0].metric", "one of reliability", id="bad-metric"),
    pytest.param({**GOOD, "probes": [without(GOOD["probes"][0], "prompt")]}, "probes[0].prompt", "is missing", id="no-prompt"),
    pytest.param({**GOOD, "probes": [without(GOOD["probes"][0], "answer")]}, "probes[0].answers", "is required", id="no-answer"),
    pytest.param(probe(answers=["Lyon"]), "probes[0].answer", "not both", id="answer-and-answers"),
    pytest.param(probe(answer=["Lyon"]), "probes[0].answer", "must be text", id="answer-a-list"),
    pytest.param(probe(extra=1), "probes[0].extra", "not a probe field", id="unknown-probe-key"),
    pytest.param({**GOOD, "id": ""}, "id", "non-empty", id="empty-id"),
]


@pytest.mark.parametrize("bad, field, message", BAD_LINES)
def test_bad_jsonl_line_names_line_and_field(tmp_path, bad, field, message):
    path = write_jsonl(tmp_path, [{**GOOD, "id": "ok"}, "", bad])
    with pytest.raises(DataError, match=message) as info:
        load_probe_jsonl(path)
    err = info.value
    assert err.where == "line 3" and err.field == field
    assert "line 3" in str(err) and field in str(err) and str(path) in str(err)


def test_jsonl_duplicate_id_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="repeats the id 'fr' of line 1") as info:
        load_probe_jsonl(write_jsonl(tmp_path, [GOOD, GOOD]))
    assert info.value.where == "line 2"
    with pytest.raises(DataError, match="no such file"):
        load_probe_jsonl(tmp_path / "absent.jsonl")


def test_locality_probe_may_omit_answers(tmp_path):
    case = load_probe_jsonl(write_jsonl(tmp_path, [{**GOOD, "probes": [{"prompt": "The capital of Italy is", "metric": "locality"}]}]))[0]
    assert case.probes[0].answers == () and case.probes[0].metric in METRICS
