"""The scope detector: name matching, the shipped head, decisions over a memory, bad input."""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from memedit.edit import Edit
from memedit.errors import ArgumentError, ModelPackageError
from memedit.eval.scope_eval import evaluate_scope, false_hit_split, load_scope_questions
from memedit.retrievers.detector import FREE_TEXT_COSINE, HEAD_DIR, NAMED_FREE_TEXT_COSINE, EditScope, ScopeDetector, load_head
from memedit.retrievers.names import NameIndex
from memedit.retrievers.entities import (answer_clash, find_mention, mask, name_likeness, relation_clash, relation_words, stem,
                                        statement_names)
from memedit.retrievers.relations import FEW_ROWS, WH_WORDS, RelationBank, bank_texts, relation_groups, wh_word

NATURAL = Path(__file__).parent / "data" / "natural_scope.jsonl"


# ---------------------------------------------------------------- names in questions


@pytest.mark.parametrize("question, name, kind", [
    ("Who employs Marisol Quenby?", "Marisol Quenby", "exact"),
    ("who employs marisol quenby", "Marisol Quenby", "exact"),
    ("What is Marisol Quenby's employer?", "Marisol Quenby", "exact"),
    ("The occupation of Martin Solares is", "Martín Solares", "exact"),
    ("Where does Marisol Quenbi work?", "Marisol Quenby", "fuzzy"),
    ("Where does Marisol Qeunby work?", "Marisol Quenby", "fuzzy"),
    ("The occupation of Emily Jones is", "Emily I Jones", "partial"),
    ("The position held by Ken Diston Lipenga is", "Ken Lipenga", "partial"),
    ("where does will work", "Will", "weak"),
    ("which university is meridale in", "Meridale University", "partial"),  # all lower case: still the name
    ("Who makes Vistaro Pulse headphones?", "the Vistaro Pulse", "exact"),  # a name's leading article may be left out
    ("Vistaro Plse manufacturer", "the Vistaro Pulse", "fuzzy"),
    ("Who commands the Temperence Vale?", "HMS Temperance Vale", "partial"),  # part of the name, with a typo
    ("Who is chancellor at Thornwik Vale University?", "the University of Thornwick Vale", "partial"),
    ("Where is the Univeristy of Caldbrige?", "University of Caldbridge", "fuzzy"),  # two typos in a three-word name
    ("What does a harbour warden do?", "harbour warden", "exact"),
    ("Who runs the Wier Hollow show?", "The Weir Hollow", "fuzzy"),  # a word of four letters, the rest exact
    ("Who signed Petra Lund-Hom?", "Petra Lund-Holm", "fuzzy"),
    ("Who designed Quorvlele?", "the Quorvelle markup language", "partial"),  # its name without what it is
    ("brannock tech motto", "the Brannock Institute of Technology", "partial"),  # a word shortened
])
def test_a_name_is_found_in_the_ways_people_write_it(question, name, kind):
    mention = find_mention(question, name)
    assert mention is not None and mention.kind == kind
    assert "X" in mask(question, mention) and name.split()[-1].casefold()[:4] not in mask(question, mention).casefold()


@pytest.mark.parametrize("question, name", [
    ("Where is Lisbon?", "Lisbon Botanical Institute"),   # one word of three is not the entity
    ("Who employs Marisol Quenby?", "Marisol Quimby-Lee"),
    ("Where was Anna born?", "A"),                        # a one-letter subject is a whole, capital token
    ("Where is Tavin?", "Tavn"),                          # no typos in names under five letters
    ("Which university did Corvin Aldermast go to?", "Meridale University"),  # a common noun, not the name
    ("Who is the captain of Temperance Bay?", "HMS Temperance Vale"),   # part of another capitalised name
    ("Where is the University of Marrowick?", "University of Caldbridge"),  # another word is not two typos
    ("Who founded the University of Tessaly?", "Orrin University"),     # part of another name, past "of"
    ("What does a night warden do?", "harbour warden"),               # a common noun with another word before it
    ("Who runs the Wier Hallow show?", "The Weir Hollow"),            # a word of four misspelt, and the other one too
    ("Which markup language is oldest?", "the Quorvelle markup language"),  # what it is, without its name
    ("Where is the Tech Museum?", "the Brannock Institute of Technology"),  # a shortened word alone
])
def test_other_names_are_not_found(question, name):
    assert find_mention(question, name) is None


def test_a_name_spelled_another_way_looks_like_the_name_but_an_unrelated_one_does_not():
    prompt = "The occupation of {} is"
    assert name_likeness("The occupation of Defer GL is", prompt, "G.L. Defer") > 0.4
    assert name_likeness("The occupation of Nadia Orlov is", prompt, "G.L. Defer") < 0.1


def test_the_kind_of_answer_asked_for_must_fit_the_target():
    assert answer_clash("When was Tamsin Heatherby born?", "Dunholme Cross") == 1.0
    assert answer_clash("Where was Tamsin Heatherby born?", "1999") == 1.0
    assert answer_clash("When was Quillmark founded?", "2009") == 0.0
    assert answer_clash("Where does Marisol Quenby work?", "the Lisbon Botanical Institute") == 0.0
    assert answer_clash("When did X get married?", "Teodor Quarrie") == 1.0
    assert answer_clash("How many people died when X sank?", "Grelland Head") == 1.0
    # a time or number in words fits; "when" after the question word asks nothing; the subject is masked
    assert answer_clash("How many stars does X have?", "four stars") == 0.0
    assert answer_clash("When is X held?", "the first Saturday of November") == 0.0
    assert answer_clash("Where did X live when he died?", "Seville") == 0.0
    assert answer_clash("What studio produced X?", "Famous Players Television") == 0.0


@pytest.mark.parametrize("question, prompt, clash", [
    ("Who is the vice-chancellor of [X]?", "The chancellor of {} is", ("vice chancellor", "chancellor")),
    ("Who wrote the libretto for [X]?", "The opera {} was composed by", ("librettist", "composer")),
    ("Who chairs the board of [X]?", "The chief financial officer of {} is", ("chairman", "chief financial officer")),
    ("Who is the guitarist in [X]?", "The drummer of {} is", ("guitarist", "drummer")),
    ("Where did [X] die?", "{} was born in", ("die", "born")),
    ("Who is the head of state of [X]?", "The head of government of {} is", ("head of state", "head of government")),
    ("Who is the chancellor of [X]?", "The chancellor of {} is", None),  # the same relation
    ("Where was the CEO of [X] born?", "The CEO of {} is", None),  # one step past it: the edit's relation is named
    ("Who runs [X]?", "The chief executive officer of {} is", None),  # a loose word: no call made
    ("Who is the son/daughter of [X]?", "Who was {}'s father?", None),  # family ties: ZsRE's own convention
    ("What is the capital of [X]?", "The official language of {} is", None),  # not siblings: other features judge it
    ("Who is the vice president of [X]?", "The president of {} is", ("vice president", "president")),
    ("who's the assistant coach at [X]", "The head coach of {} is", ("assistant coach", "coach")),
    ("Who is the mayor of [X]?", "The deputy mayor of {} is", ("mayor", "deputy mayor")),  # the other way round
    ("Who was the former CEO of [X]?", "The CEO of {} is", ("former ceo", "ceo")),
    ("Who is the deputy mayor of [X]?", "The deputy mayor of {} is", None),  # qualified on both sides
    ("Who is [X]'s ex-wife?", "{} is married to", None),  # no role word shared: other features judge it
])
def test_a_question_asking_a_sibling_of_the_edit_s_relation_is_told_apart(question, prompt, clash):
    assert relation_clash(question, prompt) == clash


def test_a_question_that_uses_the_edit_s_relation_words_is_told_apart_from_one_that_does_not():
    assert stem("designed") == stem("designer") == stem("designs") and stem("owns") == stem("owned")
    assert stem("glass") == "glass"  # a double s is not a plural
    assert relation_words("What is the nationality of the author of Dune?", "The author of {} is") == 1.0
    assert relation_words("Tell me the name of the Tavrin Bridge's designer.", "{} was designed by") == 1.0
    assert relation_words("When was Dune published?", "The author of {} is") == 0.0
    assert relation_words("Who employs Marisol?", "{} works for") == 0.0
    assert relation_words("Where was she born?", "{} was born in the town of") == pytest.approx(0.5)  # born, not town
    assert relation_words("Who is it?", "{} is") == 0.0  # no content word to share


# ---------------------------------------------------------------- the relation bank


def test_relations_people_ask_with_the_same_words_are_one_relation_in_the_bank():
    relations = [{"name": "owner", "same_as": ["parent_company"]}, {"name": "ceo"}, {"name": "parent_company"}]
    assert relation_groups(relations) == [0, 1, 0]
    with pytest.raises(ValueError, match="unknown relation 'parent'"):
        relation_groups([{"name": "owner", "same_as": ["parent"]}])
    texts, relation, _ = bank_texts()
    owned = texts.index("X is owned by")
    assert relation[texts.index("The parent company of X is")] == relation[owned]  # the shipped templates join them
    assert relation[texts.index("The CEO of X is")] != relation[owned]


def test_template_pairs_put_same_as_questions_in_scope_and_take_near_relations_as_negatives(embedder):
    from memedit.retrievers.scope_training import TEMPLATES, template_pairs

    pairs = template_pairs(seed=0, embed=embedder.encode)
    twins = [p for p in pairs if p.kind == "template_same_as"]
    assert twins and all(p.label == 1 for p in twins)
    assert any("owner" in p.question.lower() or "owns" in p.question.lower() for p in twins)
    negatives = [p for p in pairs if p.kind == "template_other_relation"]
    assert all(p.label == 0 for p in negatives)
    # the nearest relations are the confusable ones: a birthplace question meets the birth year
    birth = [p.edit.prompt for p in negatives if p.question.startswith("Where was") and p.question.endswith("born?")]
    assert any("year" in prompt or "born in" in prompt for prompt in birth)
    # never a negative of its same_as twin: who owns X is asked in scope of X's parent company
    # (what X itself owns, its subsidiaries, is another relation and may be one)
    owner = re.compile(r"\bwho owns\b|\bowner of\b|\bowned\?|\bowner\b")
    asked_owner = [p for p in pairs if p.kind == "template_other_relation" and owner.search(p.question.lower())]
    relations = json.loads(TEMPLATES.read_text(encoding="utf-8"))["relations"]
    parent = {prompt for r in relations if r["name"] == "parent_company" for prompt in r["prompts"]}
    assert asked_owner and not any(p.edit.prompt in parent for p in asked_owner)


def test_a_compound_question_is_in_scope_of_its_first_hop_and_of_no_other_edit_of_the_subject():
    from memedit.retrievers.scope_training import TEMPLATES, compound_pairs

    relations = json.loads(TEMPLATES.read_text(encoding="utf-8"))["relations"]
    group = dict(zip((r["name"] for r in relations), relation_groups(relations)))
    nouns = {r["noun"] for r in relations if r.get("target_type") and r.get("noun")}
    pairs = compound_pairs(seed=0)
    assert pairs == compound_pairs(seed=0) and pairs != compound_pairs(seed=1)
    by_question: dict[str, list] = {}
    for p in pairs:
        by_question.setdefault(p.question, []).append(p)
    assert len(by_question) > 100
    for question, asked in by_question.items():
        (first,) = [p for p in asked if p.label == 1]
        subject = first.edit.subject
        # the first hop is asked through its noun: "the CEO of X" or "X's CEO", inside another relation's question
        assert any(f"the {noun} of {subject}" in question or f"{subject}'s {noun}" in question for noun in nouns), question
        others = [p for p in asked if p.label == 0]
        assert others and all(p.edit.subject == subject for p in others)
        def groups(prompt: str) -> set[int]:
            return {group[r["name"]] for r in relations if prompt in r["prompts"]}

        assert all(groups(p.edit.prompt).isdisjoint(groups(first.edit.prompt)) for p in others), question



def test_the_bank_scores_each_relation_by_its_closest_row_and_can_hold_rows_out():
    vectors = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]
    wh = np.zeros((3, len(WH_WORDS)), np.float32)
    wh[1, WH_WORDS.index("where")] = 1.0  # relation 1 is only ever asked with "where"
    bank = RelationBank(vectors, np.array([0, 0, 1, 2]), wh)
    question = np.array([0.6, 0.8, 0.0, 0.0], dtype=np.float32)
    assert bank.size == 3
    assert np.allclose(bank.scores(question), [[0.8, 0.0, 0.0]])
    assert np.allclose(bank.scores(question, holdout=0.7), [[0.6, 0.0, 0.0]])  # the 0.8 row is "itself"
    edit = bank.scores(np.eye(4, dtype=np.float32)[2])[0]
    features = bank.features(bank.scores(question)[0], edit, wh_word("Who is it?"))
    assert features["bank_fit"] == pytest.approx(1.0) and features["bank_own"] == pytest.approx(0.0)
    assert features["bank_margin"] == pytest.approx(-0.8) and features["bank_agree"] < 0.01
    assert features["bank_wh"] == 0.0 and features["wh_asked"] == 1.0
    assert bank.features(bank.scores(question)[0], edit, wh_word("and WHERE is it"))["bank_wh"] == 1.0
    assert bank.features(bank.scores(question)[0], edit, wh_word("The capital of X is"))["wh_asked"] == 0.0
    with pytest.raises(ValueError, match="grouped by relation"):
        RelationBank(vectors, np.array([0, 1, 0, 2]))


def test_the_bank_scores_a_question_s_few_rows_as_it_scores_a_batch():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, 16)).astype(np.float32)
    bank = RelationBank(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), np.repeat(np.arange(8), 5))
    rows = rng.standard_normal((FEW_ROWS + 3, 16)).astype(np.float32)
    batch = bank.scores(rows)  # past FEW_ROWS: one matrix product
    assert batch.shape == (len(rows), 8)
    for n in range(1, FEW_ROWS + 1):  # row by row
        assert np.allclose(bank.scores(rows[:n]), batch[:n], atol=1e-5)
    assert np.allclose(bank.scores(rows[0]), batch[:1], atol=1e-5)  # one vector, not a matrix
    assert np.allclose(bank.scores(rows[:2], holdout=0.5), np.where(
        (rows[:2] @ bank.vectors.T) >= 0.5, -1.0, rows[:2] @ bank.vectors.T).reshape(2, 8, 5).max(2), atol=1e-5)


def test_the_shipped_bank_is_the_templates_embedded(embedder):
    texts, relation, wh = bank_texts()
    bank = load_head()[0].bank
    assert bank is not None and len(bank.relation) == len(texts) and (bank.relation == relation).all()
    assert np.allclose(bank.wh, wh) and np.allclose(wh.sum(1), 1.0)  # every relation is asked with some question word
    fresh = embedder.encode(texts[:20])
    assert np.allclose(bank.vectors[:20], fresh, atol=2e-3)  # stored in float16


def test_one_call_may_embed_more_texts_than_the_cache_holds(embedder):
    scope = EditScope(embedder)
    scope.CACHE_SIZE = 3
    texts = [f"Where was person number {i} born?" for i in range(7)] + ["Where was person number 0 born?"]
    vectors = scope.embed(texts)  # more distinct texts than the cache keeps: none may go missing
    assert vectors.shape == (8, embedder.dim) and np.allclose(vectors[0], vectors[7])
    assert np.allclose(vectors, embedder.encode(texts), atol=1e-6) and len(scope._cache) == 3


def test_an_edit_s_side_of_the_bank_is_scored_once_and_gives_the_same_verdicts(embedder):
    fresh, reused = EditScope(embedder), EditScope(embedder)
    edits = [Edit(subject="Quillmark Systems", prompt="The CEO of {} is", target="Ottilie Brask"),
             Edit(subject="Quillmark Systems", prompt="{} is headquartered in", target="Orsington")]
    reused.judge("Who runs Quillmark Systems?", edits)  # fills its cache
    calls = []
    bank = reused.head.bank
    original = bank.scores
    bank.scores = lambda vectors, holdout=None: calls.append(len(np.atleast_2d(vectors))) or original(vectors, holdout)
    try:
        again = reused.judge("Who leads Quillmark Systems these days?", edits)
    finally:
        del bank.scores
    assert calls == [1]  # the masked question, once for both edits; the edits' side came from the cache
    first = fresh.judge("Who leads Quillmark Systems these days?", edits)
    assert [v.score for v in again] == pytest.approx([v.score for v in first])


def test_a_question_in_other_words_than_the_edit_finds_its_relation_through_the_bank(open_memory, db_path, scope):
    memory = open_memory(db_path)
    ceo = memory.add(subject="Quillmark Systems", prompt="The CEO of {} is", target="Ottilie Brask")
    memory.add(subject="Quillmark Systems", prompt="{} is headquartered in", target="Wexbury")
    memory.add(subject="Quillmark Systems", prompt="{} was founded in the year", target="2009")
    detector = ScopeDetector(memory, scope)
    decision = detector.decide("Who is the boss of Quillmark Systems these days?")
    assert decision.best is not None and decision.best.id == ceo.id
    assert decision.verdicts[0].reason["bank_margin"] > 0
    assert detector.decide("Who owns the most shares in Quillmark Systems?").best is None


def test_an_edit_the_question_does_not_name_is_judged_on_its_statement(open_memory, db_path, scope):
    memory = open_memory(db_path)
    memory.add(subject="Wrenfield Observatory", prompt="{} is located on", target="Mount Calderhay")
    memory.add(subject="Cassius Ormerod", prompt="{} is a member of the political party", target="the Civic Tide Party")
    detector = ScopeDetector(memory, scope)
    for question in ("What is the tallest mountain in the world?", "Which record label does the Orlen Quartet record for?"):
        decision = detector.decide(question)
        assert decision.best is None
        assert all(v.reason["entity"] == "none" and v.score < scope.threshold for v in decision.verdicts)


# ---------------------------------------------------------------- the shipped head


def test_the_shipped_head_loads_with_its_checksum():
    head, meta = load_head()
    assert 0 < meta["threshold"] < 1 and "KnowEdit ZsRE and WikiData_counterfact cases 200-799" in meta["data"]


def test_a_changed_head_is_refused_with_the_command_that_rebuilds_it(tmp_path):
    copy = tmp_path / "head"
    shutil.copytree(HEAD_DIR, copy)
    weights = copy / "scope_head.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError) as err:
        load_head(copy)
    assert "SHA-256" in str(err.value) and "memedit scope train --out" in str(err.value)
    with pytest.raises(ModelPackageError, match="holds no scope detector head"):
        load_head(tmp_path / "nowhere")
    meta = json.loads((HEAD_DIR / "scope_head.json").read_text())
    (copy / "scope_head.json").write_text(json.dumps({**meta, "scalars": ["relation"]}))
    shutil.copy(HEAD_DIR / "scope_head.safetensors", weights)
    with pytest.raises(ModelPackageError, match="other features"):
        load_head(copy)
    # typical targets that are not one string (or null) per bank relation name the field
    for bad in ("cello", [1, 2], meta["bank"]["typical_targets"][:-1]):
        (copy / "scope_head.json").write_text(json.dumps({**meta, "bank": {**meta["bank"], "typical_targets": bad}}))
        with pytest.raises(ModelPackageError, match="bank.typical_targets"):
            load_head(copy)
    (copy / "scope_head.json").write_text(json.dumps({**meta, "bank": {k: v for k, v in meta["bank"].items() if k != "typical_targets"}}))
    assert load_head(copy)[0].typical_targets == ()  # a head saved before they were still loads


def test_a_head_is_read_once_while_its_files_stay_the_same(tmp_path):
    copy = tmp_path / "head"
    shutil.copytree(HEAD_DIR, copy)
    first, meta = load_head(copy)
    again, meta_again = load_head(copy)
    assert again is first and meta_again == meta and meta_again is not meta  # one Head; each caller its own meta
    meta_again["threshold"] = 0.0
    assert load_head(copy)[1]["threshold"] == meta["threshold"]
    weights = copy / "scope_head.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))  # changed after it was loaded: checked again, and refused
    with pytest.raises(ModelPackageError, match="SHA-256"):
        load_head(copy)


# ---------------------------------------------------------------- decisions over a memory


@pytest.fixture
def scope(embedder):
    return EditScope(embedder)


@pytest.fixture
def people(open_memory, db_path):
    memory = open_memory(db_path, namespace="people")
    work = memory.add(subject="Marisol Quenby", prompt="{} works for", target="the Lisbon Botanical Institute")
    born = memory.add(subject="Marisol Quenby", prompt="{} was born in", target="Tavrin")
    memory.add(subject="Halden Rovers", prompt="The home city of {} is", target="Oskarvik")
    return memory, work, born


def test_several_edits_about_one_subject_the_question_picks_the_relation(people, scope):
    memory, work, born = people
    detector = ScopeDetector(memory, scope)
    assert detector.decide("Who does Marisol Quenby work for these days?").best.id == work.id
    assert detector.decide("where was marisol quenby born").best.id == born.id
    assert detector.decide("Who is the president of France?").best is None


def test_a_question_whose_answer_cannot_be_the_target_is_out_of_scope_and_the_trace_says_why(people, scope):
    memory, work, born = people
    detector = ScopeDetector(memory, scope)
    decision = detector.decide("When was Marisol Quenby born?")
    assert decision.best is None
    verdict = next(v for v in decision.verdicts if v.edit.id == born.id)
    assert verdict.score < scope.threshold and "answer_kind" in verdict.record()
    assert detector.decide("Where was Marisol Quenby born?").best.id == born.id


def test_a_sibling_relation_is_out_of_scope_and_the_trace_says_why(open_memory, db_path, scope):
    memory = open_memory(db_path, namespace="campus")
    chancellor = memory.add(subject="the University of Thornwick Vale", prompt="The chancellor of {} is", target="Dame Hester Ruddock")
    detector = ScopeDetector(memory, scope)
    assert detector.decide("Who is the chancellor of the University of Thornwick Vale?").best.id == chancellor.id
    decision = detector.decide("Who is the vice-chancellor of the University of Thornwick Vale?")
    assert decision.best is None
    record = decision.verdicts[0].record()
    assert record["relation_clash"] == "the question asks for the vice chancellor; the edit states the chancellor"
    assert "relation_check" not in record and record["scope_score"] < scope.threshold  # no check's pass spent on it


def test_a_question_naming_only_the_target_is_in_scope_when_it_asks_the_edit_s_relation_the_other_way(scope):
    chef = Edit(subject="The Copper Wren", prompt="The head chef of the restaurant {} is", target="Ilario Venndale")
    inverse, other = scope.judge("Which restaurant is Ilario Venndale the head chef of?", [chef])[0], \
        scope.judge("Who is Ilario Venndale married to?", [chef])[0]
    assert inverse.in_scope and not other.in_scope
    assert other.reason["relation_check"] < scope.check.threshold <= inverse.reason["relation_check"]


def test_a_question_naming_only_the_target_that_asks_a_sibling_role_is_out_of_scope(scope):
    chef = Edit(subject="The Copper Wren", prompt="The head chef of the restaurant {} is", target="Ilario Venndale")
    vice = scope.judge("Which restaurant is Ilario Venndale the vice head chef of?", [chef])[0]
    same = scope.judge("Which restaurant is Ilario Venndale the head chef of?", [chef])[0]
    assert same.in_scope and "relation_clash" not in same.reason
    assert not vice.in_scope and "vice head" in vice.reason["relation_clash"]


def test_a_new_edit_a_supersede_and_a_retraction_apply_at_the_next_question(people, scope):
    memory, work, _ = people
    detector = ScopeDetector(memory, scope)
    question = "Who does Marisol Quenby work for?"
    assert detector.decide(question).best.id == work.id
    newer = memory.add(subject="Marisol Quenby", prompt="{} works for", target="Quillmark Systems")
    assert detector.decide(question).best.id == newer.id
    memory.retract(newer.id)
    assert detector.decide(question).best.id == work.id
    memory.retract(work.id)
    assert detector.decide(question).best is None


def built_afresh(memory) -> NameIndex:
    fresh = NameIndex()
    fresh.refresh(memory)
    return fresh


def same_index(a: NameIndex, b: NameIndex) -> bool:
    edits_a, names_a, tokens_a, active_a = a._state
    edits_b, names_b, tokens_b, active_b = b._state
    ids = lambda edits, keyed: {k: {edits[i].id for i in v} for k, v in keyed.items()}  # noqa: E731
    return ({e.id for e in active_a} == {e.id for e in active_b} and [e.id for e in edits_a] == [e.id for e in edits_b]
            and names_a == names_b and ids(edits_a, tokens_a) == ids(edits_b, tokens_b))


def test_the_name_index_catches_up_from_the_events_and_ends_as_one_built_afresh(people, monkeypatch):
    memory, work, born = people
    index = NameIndex()
    assert {e.id for e in index.refresh(memory)} == {e.id for e in memory.list()}  # first call: every active edit
    assert index.refresh(memory) == []  # the log has not moved
    reads = []
    monkeypatch.setattr(memory, "list", lambda *a, **k: reads.append(1) or type(memory).list(memory, *a, **k))
    alias = memory.add(subject="Lisbon Botanical Institute", prompt="{} was founded in", target="1872")
    aka = memory.add(subject="Tomas Rell", prompt="{} works for", target="Marisol Quenby", aliases=["Mari Q"])
    newer = memory.add(subject="Marisol Quenby", prompt="{} works for", target="Quillmark Systems", supersedes=work.id)
    memory.retract(born.id)
    assert [e.id for e in index.refresh(memory)] == [alias.id, aka.id, newer.id]  # only what came onto the path
    assert not reads and same_index(index, built_afresh(memory))
    assert index.names["marisol quenby"] == ["Mari Q"]  # an alias given by another edit's target
    assert newer in index.named_in("Where does Mari Q work?") and work not in index.edits
    memory.retract(newer.id)  # the superseded edit comes back on the path: read again, in order
    assert [e.id for e in index.refresh(memory)] == [e.id for e in memory.list()] and reads
    assert same_index(index, built_afresh(memory)) and work in index.edits


def test_memory_changes_since_gives_each_event_s_edit_as_it_is_now(people):
    memory, work, born = people
    start = memory.revision()
    newer = memory.add(subject="Marisol Quenby", prompt="{} works for", target="Quillmark Systems", supersedes=work.id)
    memory.retract(newer.id)
    changes = memory.changes_since(start)
    assert [(action, edit.id) for action, edit in changes][0] == ("add", newer.id)
    assert {edit.id: edit.status for _, edit in changes} == {newer.id: "retracted", work.id: "active"}
    assert memory.changes_since(memory.revision()) == []
    assert len(memory.changes_since(0)) >= 3 + len(changes)
    with pytest.raises(ArgumentError, match="revision"):
        memory.changes_since(-1)


def test_an_edit_named_in_the_question_is_a_candidate_even_when_retrieval_misses_it(people, scope):
    memory, work, _ = people
    for i in range(30):
        memory.add(statement=f"Marisol's team {i} works on ward {i} of the hospital.")
    detector = ScopeDetector(memory, scope, k=1)
    decision = detector.decide("Who employs Marisol Quenby?")
    assert decision.best is not None and decision.best.id == work.id
    assert decision.verdicts[0].reason["retrieval"] in ("nearest", "named")
    assert decision.verdicts[0].reason["entity"] == "exact" and decision.verdicts[0].reason["mention"] == "Marisol Quenby"


def test_another_namespace_is_never_a_candidate(people, scope):
    memory, _, _ = people
    other = memory.with_namespace("strangers")
    detector = ScopeDetector(other, scope)
    assert detector.decide("Who does Marisol Quenby work for?").verdicts == []


@pytest.mark.parametrize("question", [
    "Where does Marisol Quenby work? " + "filler " * 14_000,   # about 100,000 characters
    "¿Dónde trabaja Marisol Quenby?",
    "A",
    "\u200b\u200b?",
])
def test_odd_questions_get_a_decision_and_a_reason(people, scope, question):
    memory, _, _ = people
    memory.add(subject="A", prompt="The letter {} is pronounced", target="ay")
    memory.add(subject="Will", prompt="{} plays for", target="Halden Rovers")
    decision = ScopeDetector(memory, scope).decide(question)
    assert all("entity" in v.reason and "relation_score" in v.reason for v in decision.verdicts)
    assert decision.record()["step"] == "scope"


def test_a_common_word_that_is_also_a_subject_does_not_pull_questions_in(people, scope):
    memory, _, _ = people
    will = memory.add(subject="Will", prompt="{} plays for", target="Halden Rovers")
    detector = ScopeDetector(memory, scope)
    assert detector.decide("Will it rain in Oslo tomorrow?").best is None
    assert detector.decide("Which club does Will play for?").best.id == will.id


def test_an_empty_memory_decides_nothing(open_memory, db_path, scope):
    decision = ScopeDetector(open_memory(db_path), scope).decide("Who does Marisol Quenby work for?")
    assert decision.best is None and decision.verdicts == []


def test_people_s_wordings_find_their_edit_and_leave_other_questions_alone(embedder, scope):
    """The test part of our natural-wording sets (the bench set, bench/data/natural_scope_holdout.jsonl,
    no test reads; the head trains on retrievers/data/scope_questions.jsonl, not on this one)."""
    edits, questions = load_scope_questions(NATURAL)
    result = evaluate_scope(edits, questions, scope, embedder=embedder)
    assert result["edit_questions"] >= 100 and result["other_questions"] >= 100
    assert result["recall"] >= 0.80, result["mistakes"]["missed"][:5]
    assert result["wrong_edit"] <= 0.03, result["mistakes"]["wrong"][:5]
    assert result["false_hit_rate"] <= 0.10, result["mistakes"]["false_hit"][:5]


# ---------------------------------------------------------------- training and the CLI


def test_a_head_trained_on_template_pairs_is_saved_checked_and_reloaded(tmp_path, embedder):
    from memedit.retrievers.scope_training import template_pairs, train

    pairs = template_pairs(seed=0)[:600]
    assert {p.label for p in pairs} == {0, 1} and pairs == template_pairs(seed=0)[:600]
    scope = train(tmp_path / "head", pairs, embedder=embedder, progress=False)
    again = EditScope(embedder, folder=tmp_path / "head")
    assert again.threshold == pytest.approx(scope.threshold) and again.meta["sha256"] == scope.meta["sha256"]
    assert again.meta["train_pairs"] >= 500
    question = pairs[0].question
    assert again.judge(question, [pairs[0].edit])[0].score == pytest.approx(scope.judge(question, [pairs[0].edit])[0].score)
    # the relation check was trained beside the head, on the pairs that name their subject, and reloads the same
    assert again.check is not None and again.check.meta["sha256"] == scope.check.meta["sha256"]
    assert again.check.meta["train_pairs"] >= 300 and again.check.threshold == pytest.approx(scope.check.threshold)
    assert "relation_check" in again.judge(question, [pairs[0].edit])[0].reason


def test_false_hits_are_counted_apart_for_neighbours_and_for_questions_about_anything_else(tmp_path, embedder, scope):
    from memedit.retrievers.detector import Verdict

    data = tmp_path / "split.jsonl"
    data.write_text("\n".join(json.dumps(group) for group in [
        {"id": "quenby", "edits": [{"subject": "Marisol Quenby", "prompt": "{} works for", "target": "the Lisbon Botanical Institute"}],
         "questions": [{"q": "Who employs Marisol Quenby?", "edit": 0}, {"q": "Where was Marisol Quenby born?", "edit": None}]},
        {"id": "famous", "questions": [{"q": "Who wrote Hamlet?", "edit": None}, {"q": "How tall is Mount Everest?", "edit": None}]},
    ]) + "\n")
    edits, questions = load_scope_questions(data)
    assert [q.in_edited_group for q in questions] == [True, True, False, False]

    class EveryEdit:  # calls every candidate in scope: each other question is a false hit
        name, threshold = "every edit", 0.5

        def judge(self, question, candidates, names=None):
            return [Verdict(e, 1.0, True, {}) for e in candidates]

    loose = evaluate_scope(edits, questions, EveryEdit(), embedder=embedder)
    assert (loose["neighbour_false_hits"], loose["neighbour_questions"]) == (1, 1)
    assert (loose["unrelated_false_hits"], loose["unrelated_questions"]) == (2, 2)
    assert false_hit_split(loose) == "1 of 1 in a group with edits, 2 of 2 in a group without edits"
    assert loose["decide_again_ms_p50"] > 0  # each question decided a second time, and timed
    shipped = evaluate_scope(edits, questions, scope, embedder=embedder)
    assert shipped["recall"] == 1.0 and shipped["neighbour_false_hits"] == shipped["unrelated_false_hits"] == 0


def test_scope_questions_with_a_bad_edit_index_name_the_line_and_field(tmp_path):
    from memedit.eval.knowedit import DataError

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "g", "edits": [{"subject": "Zed", "prompt": "{} plays", "target": "chess"}],
                               "questions": [{"q": "What does Zed play?", "edit": 3}]}) + "\n")
    with pytest.raises(DataError, match=r"line 1: questions\[0\]\.edit"):
        load_scope_questions(bad)


def test_memedit_scope_eval_prints_recall_and_false_hits(tmp_path, capsys, monkeypatch):
    from memedit.cli import main

    data = tmp_path / "mine.jsonl"
    rows = [{"id": "g1", "edits": [{"subject": "Marisol Quenby", "prompt": "{} works for", "target": "Lumo Bank"}],
             "questions": [{"q": "Who employs Marisol Quenby?", "edit": 0}, {"q": "Who wrote Hamlet?", "edit": None}]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["--json", "scope", "eval", "--data", str(data)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["edit_questions"] == 1 and result["other_questions"] == 1
    assert result["recall"] == 1.0 and result["false_hit_rate"] == 0.0
    assert result["neighbour_questions"] == 1 and result["unrelated_questions"] == 0  # its group holds an edit
    assert main(["scope", "eval", "--data", str(data)]) == 0
    assert "false hits 0.0 % (0 of 1 in a group with edits)" in capsys.readouterr().out


def test_a_free_text_edit_is_judged_on_its_statement(open_memory, db_path, scope):
    memory = open_memory(db_path)
    fact = memory.add(statement="Alice's manager is Bob.")
    detector = ScopeDetector(memory, scope)
    for question in ("Who is Alice's manager?", "Who manages Alice?"):
        decision = detector.decide(question)
        assert decision.best is not None and decision.best.id == fact.id
        assert decision.verdicts[0].reason["entity"] == "free text"
    assert detector.decide("How many legs does a spider have?").best is None


def test_a_free_text_edit_whose_entity_is_named_is_judged_on_what_is_asked_of_it(open_memory, db_path, scope):
    memory = open_memory(db_path)
    fact = memory.add(statement="The Brackenhurst Library is closed on Tuesdays.")
    memory.add(statement="Alice's manager is Bob.")
    detector = ScopeDetector(memory, scope)
    # the shared name no longer decides: the question and the statement, the name masked in both
    asked = detector.decide("can i go to the brackenhurst libary on a tuesday")
    top = asked.verdicts[0]
    assert top.edit.id == fact.id and asked.best is not None and asked.best.id == fact.id
    assert top.reason["mention"] == "brackenhurst libary" and top.reason["relation_check"] >= scope.check.threshold
    assert top.reason["cosine"] < FREE_TEXT_COSINE  # the statement's own cosine would have missed it
    for other in ("How many books does the Brackenhurst Library hold?", "Who founded the Brackenhurst Library?"):
        decision = detector.decide(other)
        assert decision.best is None and decision.verdicts[0].reason["relation_check"] < scope.check.threshold


def test_a_question_about_a_negated_free_text_fact_is_in_scope_on_its_masked_cosine(open_memory, db_path, scope):
    memory = open_memory(db_path)
    ferry = memory.add(statement="The Pellory Island ferry does not run on Sundays.")
    decision = ScopeDetector(memory, scope).decide("Is the Pellory Island ferry running on Sunday?")
    assert decision.best is not None and decision.best.id == ferry.id
    # the check never saw a negation and turns the pair down; the masked cosine carries it
    assert decision.verdicts[0].reason["relation_check"] < scope.check.threshold
    assert decision.verdicts[0].reason["masked_cosine"] >= NAMED_FREE_TEXT_COSINE


def test_one_detail_of_a_free_text_edit_that_says_several_is_in_scope(open_memory, db_path, scope):
    memory = open_memory(db_path)
    bus = memory.add(statement="The Harlow Street night bus leaves Dunmere Station at 23:40 and reaches the airport "
                               "at 00:35, every day except Sunday.")
    detector = ScopeDetector(memory, scope)
    for question in ("Does the Harlow Street night bus run on Sundays?", "when does the harlow street night bus get to the airport"):
        decision = detector.decide(question)
        assert decision.best is not None and decision.best.id == bus.id
        assert decision.verdicts[0].reason["relation_check"] >= scope.check.threshold
    asked = detector.decide("Does the Harlow Street night bus run on Sundays?").verdicts[0]
    assert asked.reason["cosine"] < FREE_TEXT_COSINE  # the statement's cosine alone misses it
    for other in ("Who drives the Harlow Street night bus?", "How much is a ticket on the Harlow Street night bus?"):
        decision = detector.decide(other)
        assert decision.best is None and decision.verdicts[0].reason["relation_check"] < scope.check.threshold


@pytest.mark.parametrize("statement, names", [
    ("The Pellory Island ferry does not run on Sundays.", ("Pellory Island",)),
    ("In Cranholme, the number 12 bus no longer stops at the hospital.", ("Cranholme",)),
    ("The outdoor pool at Marrowick Park is open from June to August.", ("Marrowick Park",)),
    ("The Bank of England meets on the first Thursday.", ("Bank of England",)),
    ("The Duncrest Chess Club meets in the back room of the Fox & Lantern pub.", ("Duncrest Chess Club", "Fox & Lantern")),
    ("I prefer tea to coffee.", ()),
])
def test_a_free_text_statement_s_names_leave_out_sentence_starts_days_and_months(statement, names):
    assert statement_names(statement) == names


class Recording:
    """The session embedder, writing down every text it is asked to embed."""

    def __init__(self, real) -> None:
        self.real, self.name, self.dim, self.texts = real, real.name, real.dim, []

    def encode(self, texts, batch_size: int = 64, progress: bool = False):
        self.texts += list(texts)
        return self.real.encode(texts, batch_size=batch_size)

    def encode_one(self, text: str):
        return self.encode([text])[0]


def test_a_question_never_embeds_a_stored_statement_again(open_memory, db_path, embedder):
    recording = Recording(embedder)
    memory = open_memory(db_path, embedder=recording)
    facts = [memory.add(statement="Alice's manager is Bob."),
             memory.add(subject="Marisol Quenby", prompt="{} works for", target="the Lisbon Botanical Institute")]
    detector = ScopeDetector(memory, EditScope(recording))
    recording.texts.clear()
    decision = detector.decide("Who is Alice's manager?")
    assert decision.best is not None and decision.best.id == facts[0].id
    assert detector.decide("Who employs Marisol Quenby?").best.id == facts[1].id
    assert not {f.statement for f in facts} & set(recording.texts)
    # and a statement added later comes from the store too
    later = memory.add(statement="The office cat is called Pixel.")
    recording.texts.clear()
    assert detector.decide("What is the office cat called?").best.id == later.id
    assert later.statement not in recording.texts


def test_a_question_warmed_on_another_thread_is_decided_without_embedding_and_the_same(open_memory, db_path, embedder):
    recording = Recording(embedder)
    memory = open_memory(db_path, embedder=recording)
    work = memory.add(subject="Marisol Quenby", prompt="{} works for", target="the Lisbon Botanical Institute")
    memory.add(statement="Alice's manager is Bob.")
    cold = ScopeDetector(memory, EditScope(recording))
    warm = ScopeDetector(memory, EditScope(recording))
    memory.add(subject="Marisol Quenby", prompt="{} was born in", target="Tavrin")  # fresh to both name indexes
    for question in ("Who employs marisol quenby these days?", "Who is Alice's manager?", "Who is the president of France?"):
        thread = threading.Thread(target=warm.warm, args=(question,))
        thread.start()
        thread.join()
        recording.texts.clear()
        checked = []
        forward = warm.classifier.check.embed_and_score
        warm.classifier.check.embed_and_score = lambda texts, items: checked.append(items) or forward(texts, items)
        decided = warm.decide(question)
        del warm.classifier.check.embed_and_score
        assert recording.texts == [] and checked == []  # every vector and check score it needs was ready
        expected = cold.decide(question)
        assert [(v.edit.id, round(v.score, 6), v.in_scope) for v in decided.verdicts] == \
            [(v.edit.id, round(v.score, 6), v.in_scope) for v in expected.verdicts]
    assert warm.decide("Who employs Marisol Quenby?").best.id == work.id


def test_a_question_and_its_relation_check_pairs_share_one_encoder_pass(open_memory, db_path, embedder):
    memory = open_memory(db_path, embedder=embedder)
    memory.add(subject="Marisol Quenby", prompt="{} works for", target="the Lisbon Botanical Institute")
    memory.add(subject="Marisol Quenby", prompt="{} was born in", target="Tavrin")
    memory.add(statement="The Pellory Island ferry does not run on Sundays.")
    fused = ScopeDetector(memory, EditScope(embedder.real))  # the packaged MiniLM itself, as a user's detector has it
    assert fused.classifier.check.embedder is embedder.real
    passes = []
    run = fused.classifier.check.embed_and_score
    fused.classifier.check.embed_and_score = lambda texts, items: passes.append((list(texts), list(items))) or run(texts, items)
    question = "Which company does marisol quenby work for nowadays?"  # asked nowhere else: no pair of it is cached
    decided = fused.decide(question)
    (texts, items), *later = passes  # one pass: the question, its masked form and both pairs
    assert texts[0] == question and len(texts) == 2 and "marisol quenby" not in texts[1]
    assert len(items) == 2 and all("marisol quenby" not in q.lower() for q, _ in items)
    # judging asks again only for what the first pass could not know: a turned-down pair with the typical target
    typical = [v.reason for v in decided.verdicts if "relation_check_typical_target" in v.reason]
    assert [(t, len(i)) for t, i in later] == ([([], len(typical))] if typical else [])
    # the same decision as a detector whose check runs apart, its own check scoring afresh
    from memedit.retrievers.relation_check import RelationCheck

    apart = EditScope(embedder.real, check=RelationCheck.load(HEAD_DIR), one_pass=False)
    apart_passes = []
    run_apart = apart.check.embed_and_score
    apart.check.embed_and_score = lambda texts, items: apart_passes.append(list(texts)) or run_apart(texts, items)
    expected = ScopeDetector(memory, apart).decide(question)
    assert apart_passes and not any(apart_passes)  # the check's passes held pairs only
    assert [v.edit.id for v in decided.verdicts] == [v.edit.id for v in expected.verdicts]
    assert [v.in_scope for v in decided.verdicts] == [v.in_scope for v in expected.verdicts] == [True, False, False]
    assert np.allclose([v.score for v in decided.verdicts], [v.score for v in expected.verdicts], atol=1e-3)


def test_a_free_text_edit_whose_name_is_asked_is_a_candidate_checked_in_the_question_s_own_pass(open_memory, db_path, embedder):
    memory = open_memory(db_path, embedder=embedder)
    ferry = memory.add(statement="The Pellory Island ferry does not run on Sundays.")
    for i in range(4):  # nearer the question than the ferry's statement, and naming nothing (no capitals)
        memory.add(statement=f"note {i}: is the pellory island ferry running on sunday? people ask it every week.")
    fused = ScopeDetector(memory, EditScope(embedder.real), k=2)
    passes = []
    run = fused.classifier.check.embed_and_score
    fused.classifier.check.embed_and_score = lambda texts, items: passes.append(list(items)) or run(texts, items)
    question = "is the pellory island ferry running on sunday then?"  # asked nowhere else: no pair of it is cached
    assert [e.id for e in fused.named(question)] == [ferry.id]
    nearest = [h.edit.id for h in memory.search_vector(memory.embedder.encode_one(question), k=2)]
    assert ferry.id not in nearest  # retrieval alone would not bring it
    decided = fused.decide(question)
    verdict = next(v for v in decided.verdicts if v.edit.id == ferry.id)
    assert verdict.in_scope and verdict.reason["retrieval"] == "named"
    assert len(passes) == 1 and len(passes[0]) == 1 and "pellory" not in passes[0][0][0].lower()  # its pair, in the first pass


def test_scope_questions_become_pairs_with_their_edit_and_against_their_group_s_other_edits(tmp_path):
    from memedit.retrievers.scope_training import question_pairs

    path = tmp_path / "questions.jsonl"
    path.write_text(json.dumps({"id": "g1", "edits": [
        {"subject": "Lucan Brightwater", "prompt": "{} works for", "target": "Oskarsson Freight"},
        {"subject": "Lucan Brightwater", "prompt": "{} was born in", "target": "Tolleby"}],
        "questions": [{"q": "Who employs Lucan Brightwater?", "edit": 0}, {"q": "Where was Lucan born?", "edit": 1},
                      {"q": "Which school did Lucan Brightwater attend?", "edit": None}]}) + "\n"
        + json.dumps({"id": "u1", "edits": [], "questions": [{"q": "Who wrote Hamlet?", "edit": None}]}) + "\n")
    pairs = question_pairs(path)
    by_question = {(p.question, p.edit.target): p.label for p in pairs}
    assert by_question == {("Who employs Lucan Brightwater?", "Oskarsson Freight"): 1,
                           ("Who employs Lucan Brightwater?", "Tolleby"): 0,
                           ("Which school did Lucan Brightwater attend?", "Oskarsson Freight"): 0,
                           ("Where was Lucan born?", "Tolleby"): 1, ("Where was Lucan born?", "Oskarsson Freight"): 0,
                           ("Which school did Lucan Brightwater attend?", "Tolleby"): 0}
