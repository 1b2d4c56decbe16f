"""Memory: supersede and retract with history, all-or-nothing batches, search ranking, reads."""

import numpy as np
import pytest

from memedit import ConflictError, Edit, EditError, EditNotFound, Memory

from conftest import STATEMENTS, BruteForce, assert_same_ranking

CAPITAL = "The capital of {} is"


@pytest.fixture
def db_path(storage):
    """Every test of this file runs on SQLite and on PostgreSQL (conftest's ``storage``)."""
    return storage



def snapshot(memory: Memory, queries=("capital of France", "coffee machine", "who plays football")):
    """Everything observable about a namespace: edits, events, search results, counts."""
    edits = [(e.to_dict(), e.status, e.superseded_by) for e in memory.list(status=None)]
    events = [ev.to_dict() for ev in memory.history()]
    hits = {q: [(h.edit.id, round(h.score, 6)) for h in memory.search(q, k=10)] for q in queries}
    stats = {k: v for k, v in memory.stats().items() if k != "index"}
    return edits, events, hits, stats


def actions(memory, edit_id):
    return [ev.action for ev in memory.history(edit_id)]


@pytest.mark.parametrize("subject, prompt", [
    ("France", CAPITAL),
    ("  FRANCE ", "the capital of {} IS"),
    ("france", "The  capital   of {}  is"),
])
def test_same_subject_and_relation_supersedes_the_older_edit(memory, subject, prompt):
    first = memory.add(subject="France", prompt=CAPITAL, target="Lyon", old_target="Paris")
    second = memory.add(subject=subject, prompt=prompt, target="Marseille", old_target="Paris")
    assert second.supersedes == first.id and second.status == "active"
    older = memory.get(first.id)
    assert older.status == "superseded" and older.superseded_by == second.id
    # nothing is overwritten: both stay, with their own fields
    assert [(e.id, e.target) for e in memory.list(status=None)] == [(first.id, "Lyon"), (second.id, "Marseille")]
    assert [e.id for e in memory.list()] == [second.id]
    assert [e.id for e in memory.list(status="superseded")] == [first.id]
    assert actions(memory, first.id) == ["add", "supersede"]
    assert actions(memory, second.id) == ["add"]
    assert memory.history(second.id)[0].detail["supersedes"] == [first.id]
    assert memory.history(first.id)[1].detail["by"] == second.id
    hits = memory.search("What is the capital of France?", k=5)
    assert [h.edit.id for h in hits] == [second.id]


def test_a_different_relation_or_subject_does_not_supersede(memory):
    a = memory.add(subject="France", prompt=CAPITAL, target="Lyon")
    b = memory.add(subject="France", prompt="The largest city of {} is", target="Lyon")
    c = memory.add(subject="Spain", prompt=CAPITAL, target="Seville")
    d = memory.add(statement="The capital of France is Lyon.")  # free text has no supersede key
    assert [e.id for e in memory.list()] == [a.id, b.id, c.id, d.id]
    assert all(e.supersedes is None for e in memory.list())


def test_retracting_the_newer_edit_restores_the_older(memory):
    first = memory.add(subject="France", prompt=CAPITAL, target="Lyon")
    second = memory.add(subject="France", prompt=CAPITAL, target="Marseille")
    retracted = memory.retract(second.id, reason="wrong city")
    assert retracted.id == second.id and retracted.status == "retracted"
    assert memory.get(first.id).status == "active" and memory.get(first.id).superseded_by is None
    assert actions(memory, first.id) == ["add", "supersede", "restore"]
    assert actions(memory, second.id) == ["add", "retract"]
    assert memory.history(second.id)[1].detail["reason"] == "wrong city"
    assert memory.history(first.id)[2].detail["after_retract_of"] == second.id
    assert [e.id for e in memory.list()] == [first.id]
    assert [h.edit.id for h in memory.search("capital of France", k=5)] == [first.id]

    before = snapshot(memory)
    with pytest.raises(ConflictError) as caught:
        memory.retract(second.id)
    assert second.id in str(caught.value) and "already retracted" in str(caught.value)
    assert snapshot(memory) == before  # a refused retract writes nothing


def test_an_edit_coming_back_yields_to_the_active_edit_that_holds_its_key(memory):
    first = memory.add(subject="France", prompt=CAPITAL, target="Lyon")
    # an explicit supersede by an edit on another key, then a new edit on first's key
    second = memory.add(subject="Spain", prompt=CAPITAL, target="Seville", supersedes=first.id)
    third = memory.add(subject="France", prompt=CAPITAL, target="Nice")
    assert third.supersedes is None  # first was not active, so nothing was superseded
    memory.retract(second.id)
    back = memory.get(first.id)
    assert back.status == "superseded" and back.superseded_by == third.id
    assert actions(memory, first.id) == ["add", "supersede", "supersede"]
    assert [e.id for e in memory.list()] == [third.id]


def test_retracting_the_only_edit_leaves_nothing_searchable(memory):
    only = memory.add(subject="France", prompt=CAPITAL, target="Lyon")
    memory.retract(only.id)
    assert memory.list() == [] and memory.search("capital of France", k=3) == []
    assert [e.status for e in memory.list(status=None)] == ["retracted"]


def test_retracting_a_superseded_edit_then_the_newer_restores_nothing(memory):
    first = memory.add(subject="France", prompt=CAPITAL, target="Lyon")
    second = memory.add(subject="France", prompt=CAPITAL, target="Marseille")
    memory.retract(first.id)
    assert memory.history(first.id)[-1].detail["was"] == "superseded"
    memory.retract(second.id)
    assert {e.id: e.status for e in memory.list(status=None)} == {first.id: "retracted", second.id: "retracted"}
    assert "restore" not in [ev.action for ev in memory.history()]
    assert memory.search("capital of France", k=3) == []


def test_a_chain_of_supersedes_unwinds_one_step_per_retract(memory):
    a = memory.add(subject="France", prompt=CAPITAL, target="Lyon")
    b = memory.add(subject="France", prompt=CAPITAL, target="Nice")
    c = memory.add(subject="France", prompt=CAPITAL, target="Lille")
    assert (b.supersedes, c.supersedes) == (a.id, b.id)
    memory.retract(c.id)
    assert [e.id for e in memory.list()] == [b.id]
    memory.retract(b.id)
    assert [e.id for e in memory.list()] == [a.id]
    assert [h.edit.id for h in memory.search("capital of France", k=5)] == [a.id]


def test_explicit_supersedes_on_free_text_edits(memory):
    old = memory.add(statement="The coffee machine is on the second floor.")
    new = memory.add(statement="The coffee machine moved to the third floor.", supersedes=old.id)
    assert memory.get(old.id).status == "superseded" and memory.get(old.id).superseded_by == new.id
    assert [h.edit.id for h in memory.search("Where is the coffee machine?", k=5)] == [new.id]
    memory.retract(new.id)
    assert memory.get(old.id).status == "active"
    assert actions(memory, old.id) == ["add", "supersede", "restore"]
    assert [h.edit.id for h in memory.search("Where is the coffee machine?", k=5)] == [old.id]


def test_restore_is_blocked_when_another_edit_holds_the_key(memory):
    a = memory.add(subject="France", prompt=CAPITAL, target="Lyon")
    note = memory.add(statement="France has no capital any more.", supersedes=a.id)
    b = memory.add(subject="France", prompt=CAPITAL, target="Nice")  # a is not active: b supersedes nothing
    assert b.supersedes is None
    memory.retract(note.id)
    # restoring a would give the key two active edits; a stays superseded
    assert memory.get(a.id).status == "superseded"
    assert [e.id for e in memory.list()] == [b.id]


def test_supersedes_of_a_missing_or_inactive_edit_is_refused(memory):
    kept = memory.add(statement="The coffee machine is on the second floor.")
    gone = memory.add(statement="The printer is broken.")
    memory.retract(gone.id)
    before = snapshot(memory)
    with pytest.raises(EditNotFound):
        memory.add(statement="Replacement.", supersedes="does-not-exist")
    with pytest.raises(ConflictError) as caught:
        memory.add(statement="The printer works again.", supersedes=gone.id)
    assert "retracted" in str(caught.value) and gone.id in str(caught.value)
    assert snapshot(memory) == before
    assert memory.get(kept.id).status == "active"


def _seed(memory):
    a = memory.add(subject="France", prompt=CAPITAL, target="Lyon", source="seed")
    b = memory.add(statement="The coffee machine is on the second floor.", source="seed")
    c = memory.add(subject="Lionel Messi", prompt="{} plays football for", target="Juventus", source="seed")
    memory.retract(c.id)
    return a, b, c


@pytest.mark.parametrize("case", ["duplicate-existing-id", "supersedes-retracted", "duplicate-id-in-batch",
                                  "invalid-later-edit", "supersedes-missing", "namespace-mismatch"])
def test_add_many_is_all_or_nothing(memory, case):
    a, b, c = _seed(memory)
    before = snapshot(memory)
    good = [
        Edit(subject="France", prompt=CAPITAL, target="Marseille", id="new-1"),  # would supersede a
        {"statement": "The coffee machine moved to the fourth floor.", "supersedes": b.id, "id": "new-2"},
        Edit(subject="Spain", prompt=CAPITAL, target="Seville", id="new-3"),
    ]
    bad = {
        "duplicate-existing-id": Edit(statement="Clash.", id=b.id),
        "supersedes-retracted": Edit(statement="Messi is back at Barcelona.", supersedes=c.id),
        "duplicate-id-in-batch": Edit(statement="Clash.", id="new-1"),
        "invalid-later-edit": {"subject": "Italy", "prompt": "The capital of Italy is", "target": "Milan"},
        "supersedes-missing": Edit(statement="Orphan.", supersedes="nope"),
        "namespace-mismatch": Edit(statement="Elsewhere.", namespace="other"),
    }[case]
    with pytest.raises((ConflictError, EditError, EditNotFound)):
        memory.add_many(good + [bad])
    assert snapshot(memory) == before
    for edit_id in ("new-1", "new-2", "new-3"):
        with pytest.raises(EditNotFound):
            memory.get(edit_id)
    # and the memory still takes the good part afterwards
    stored = memory.add_many(good)
    assert [e.id for e in stored] == ["new-1", "new-2", "new-3"]
    assert memory.get(a.id).status == "superseded" and memory.get(b.id).status == "superseded"


def test_add_many_within_one_batch_supersedes_in_order(memory):
    stored = memory.add_many([
        {"subject": "France", "prompt": CAPITAL, "target": "Lyon"},
        {"subject": "france", "prompt": CAPITAL, "target": "Nice"},
    ])
    assert stored[0].status == "superseded" and stored[1].supersedes == stored[0].id
    assert [h.edit.id for h in memory.search("capital of France", k=5)] == [stored[1].id]


QUERIES = ["Where can I get a coffee?", "Which club does Messi play for?", "What is the capital city of France?",
           "How tall is Everest?", "office hours", "planets and moons"]


def test_search_ranking_matches_brute_force_cosine(memory, embedder):
    stored = memory.add_many([{"statement": s} for s in STATEMENTS])
    memory.retract(stored[1].id)  # the coffee edit leaves the retrieval path
    replaced = memory.add(statement="The Eiffel Tower is made of cheese.", supersedes=stored[3].id)
    active = memory.list()
    assert stored[1].id not in {e.id for e in active} and stored[3].id not in {e.id for e in active}
    assert replaced.id in {e.id for e in active}
    expected = BruteForce(embedder, active)
    for k in (1, 3, 20):
        for query in QUERIES:
            hits = memory.search(query, k=k)
            assert len(hits) == min(k, len(active))
            assert_same_ranking(hits, expected.top(query, k), tol=1e-5)
            assert all(h.edit.status == "active" for h in hits)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_search_vector_matches_search(memory, embedder):
    memory.add_many([{"statement": s} for s in STATEMENTS])
    query = "Which club does Messi play for?"
    by_text = memory.search(query, k=4)
    by_vector = memory.search_vector(embedder.encode_one(query), k=4)
    assert [(h.edit.id, h.score) for h in by_text] == [(h.edit.id, h.score) for h in by_vector]


@pytest.mark.parametrize("query, k, word", [("", 3, "query"), ("   ", 3, "query"), (None, 3, "query"),
                                             ("coffee", 0, "k must"), ("coffee", 1001, "k must"),
                                             ("coffee", 2.5, "k must"), ("coffee", True, "k must")])
def test_bad_search_arguments(memory, query, k, word):
    memory.add(statement="The coffee machine is on the third floor.")
    with pytest.raises(ValueError) as caught:
        memory.search(query, k=k)
    assert word in str(caught.value)


def test_get_returns_the_stored_edit_and_a_missing_id_raises_edit_not_found(memory):
    edit = memory.add(subject="France", prompt=CAPITAL, target="Lyon", aliases=["Lugdunum"], source="chat")
    got = memory.get(edit.id)
    assert got == edit and got.namespace == "default" and got.aliases == ("Lugdunum",) and got.source == "chat"
    assert len(got.id) == 16 and got.created_at
    with pytest.raises(EditNotFound) as caught:
        memory.get("no-such-id")
    err = caught.value
    assert isinstance(err, LookupError)
    assert err.edit_id == "no-such-id" and err.namespace == "default"
    message = str(err)
    assert "'no-such-id'" in message and "'default'" in message and "list" in message
    with pytest.raises(EditNotFound):
        memory.retract("no-such-id")
    with pytest.raises(EditNotFound):
        memory.history("no-such-id")


def test_add_keeps_given_id_and_created_at_and_refuses_ambiguous_calls(memory):
    edit = memory.add(Edit(statement="Given.", id="my-id", created_at="2026-01-31T12:00:00+00:00"))
    assert edit.id == "my-id" and edit.created_at == "2026-01-31T12:00:00+00:00"
    with pytest.raises(TypeError):
        memory.add(Edit(statement="x"), source="chat")
    with pytest.raises(TypeError):
        memory.add_many(["just a string"])
    with pytest.raises(EditError):
        memory.add(subject="France", prompt="capital", target="Lyon")
    with pytest.raises(ConflictError):
        memory.add(statement="Again.", id="my-id")
    assert [e.id for e in memory.list(status=None)] == ["my-id"]


def test_list_filters(memory):
    rows = [  # (fields, final status)
        (dict(subject="France", prompt=CAPITAL, target="Lyon", source="chat"), "superseded"),
        (dict(subject="France", prompt=CAPITAL, target="Nice", old_target="Paris", source="import"), "active"),
        (dict(subject="Pluto", prompt="{} is classified as", kind="erase", source="chat"), "active"),
        (dict(statement="The coffee machine is on the third floor.", source="chat"), "retracted"),
        (dict(subject="FRANCE", prompt="The largest city of {} is", target="Lyon"), "active"),
        (dict(statement="The office closes at 6 pm.", source="import"), "active"),
        (dict(subject="Spain", prompt=CAPITAL, target="Seville", old_target="Madrid", source="chat"), "active"),
    ]
    stored = [memory.add(**fields) for fields, _ in rows]
    memory.retract(stored[3].id)
    expected = [(e.id, fields, status) for e, (fields, status) in zip(stored, rows)]
    kind_of = {e.id: e.kind for e in stored}

    def ids(pred):
        return [i for i, fields, status in expected if pred(i, fields, status)]

    assert [e.id for e in memory.list()] == ids(lambda i, f, s: s == "active")
    assert [e.id for e in memory.list(status=None)] == ids(lambda i, f, s: True)
    for status in ("active", "superseded", "retracted"):
        assert [e.id for e in memory.list(status=status)] == ids(lambda i, f, s: s == status)
    for kind in ("insert", "modify", "erase"):
        assert [e.id for e in memory.list(status=None, kind=kind)] == ids(lambda i, f, s: kind_of[i] == kind)
    assert [e.id for e in memory.list(kind="modify")] == ids(lambda i, f, s: kind_of[i] == "modify" and s == "active")
    assert [e.id for e in memory.list(status=None, subject="france")] == \
        ids(lambda i, f, s: (f.get("subject") or "").lower() == "france")
    assert [e.id for e in memory.list(status=None, source="chat")] == ids(lambda i, f, s: f.get("source") == "chat")
    assert [e.id for e in memory.list(source="chat", kind="insert")] == \
        ids(lambda i, f, s: f.get("source") == "chat" and kind_of[i] == "insert" and s == "active")
    everything = ids(lambda i, f, s: True)
    assert [e.id for e in memory.list(status=None, limit=3)] == everything[:3]
    assert [e.id for e in memory.list(status=None, limit=3, offset=2)] == everything[2:5]
    assert [e.id for e in memory.list(status=None, offset=5)] == everything[5:]
    assert memory.list(status=None, limit=0) == []
    with pytest.raises(ValueError) as caught:
        memory.list(status="deleted")
    assert "status must be one of" in str(caught.value)


def test_stats_counts(memory):
    empty = memory.stats()
    assert empty["edits"] == 0 and empty["events"] == 0 and empty["active_by_kind"] == {}
    assert empty["by_status"] == {"active": 0, "superseded": 0, "retracted": 0, "consolidated": 0}
    assert empty["namespace"] == "default" and empty["db"] == memory.path

    a = memory.add(subject="France", prompt=CAPITAL, target="Lyon")                     # add
    memory.add(subject="France", prompt=CAPITAL, target="Nice", old_target="Lyon")     # add + supersede
    memory.add(subject="Pluto", prompt="{} is classified as", kind="erase")            # add
    c = memory.add(statement="The coffee machine is on the third floor.")              # add
    memory.add(statement="The office closes at 6 pm.")                                 # add
    memory.retract(c.id)                                                                # retract
    assert memory.get(a.id).status == "superseded"
    stats = memory.stats()
    assert stats["edits"] == 5
    assert stats["by_status"] == {"active": 3, "superseded": 1, "retracted": 1, "consolidated": 0}
    assert stats["active_by_kind"] == {"modify": 1, "erase": 1, "insert": 1}
    assert stats["events"] == 5 + 1 + 1 == len(memory.history())
    assert stats["embedder"] == memory._shared.embedder_name
    memory.search("capital", k=1)
    assert stats["edits"] == sum(stats["by_status"].values())
    assert memory.stats()["index"] == {"kind": "flat", "size": 3}


def test_statement_vectors_are_the_stored_ones_of_this_namespace_only(open_memory, storage, embedder):
    ours, theirs = open_memory(storage, namespace="ours"), open_memory(storage, namespace="theirs")
    mine = ours.add(statement="Alice's manager is Bob.")
    other = theirs.add(statement="Carol's manager is Dan.")
    vectors = ours.statement_vectors([mine, other])
    assert set(vectors) == {mine.id}
    assert np.allclose(vectors[mine.id], embedder.encode_one(mine.statement), atol=1e-5)
    assert theirs.statement_vectors([mine]) == {}
