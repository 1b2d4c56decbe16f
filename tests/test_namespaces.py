"""Namespaces: no read or write from one namespace ever returns or touches another's edits."""

import pytest

from memedit import Edit, EditError, EditNotFound, Memory

CAPITAL = "The capital of {} is"
QUERIES = ["What is the capital of France?", "Where is the coffee machine?", "Who is Alice's manager?"]


@pytest.fixture
def db_path(storage):
    """Every test of this file runs on SQLite and on PostgreSQL (conftest's ``storage``)."""
    return storage



def state(memory: Memory):
    """A namespace's edits (with status) and events, for before/after comparisons."""
    return ([(e.to_dict(), e.status, e.superseded_by) for e in memory.list(status=None)],
            [ev.to_dict() for ev in memory.history()])


@pytest.fixture(params=["with_namespace", "separate_memory"])
def two(request, open_memory, db_path):
    """Namespace A ('alice') with edits, and a handle on namespace B ('bob') of the same DB."""
    base = open_memory(db_path)
    alice = base.with_namespace("alice")
    a_edits = alice.add_many([
        {"subject": "France", "prompt": CAPITAL, "target": "Lyon"},
        {"statement": "The coffee machine is on the third floor."},
        {"subject": "Alice", "prompt": "{}'s manager is", "target": "Bob"},
    ])
    alice.retract(a_edits[2].id)
    bob = base.with_namespace("bob") if request.param == "with_namespace" else open_memory(db_path, namespace="bob")
    return alice, bob, a_edits


def test_empty_namespace_sees_nothing_of_another(two):
    alice, bob, a_edits = two
    assert bob.list(status=None) == []
    assert bob.history() == []
    for query in QUERIES:
        assert bob.search(query, k=10) == []
    stats = bob.stats()
    assert stats["namespace"] == "bob" and stats["edits"] == 0 and stats["events"] == 0
    assert stats["by_status"] == {"active": 0, "superseded": 0, "retracted": 0, "consolidated": 0}


def test_reads_from_b_return_only_b_edits(two):
    alice, bob, a_edits = two
    b_edits = bob.add_many([
        {"subject": "France", "prompt": CAPITAL, "target": "Nice"},          # same key as alice's first edit
        {"statement": "The coffee machine is broken."},
    ])
    b_ids = {e.id for e in b_edits}
    a_ids = {e.id for e in a_edits}
    assert {e.id for e in bob.list(status=None)} == b_ids
    assert all(e.namespace == "bob" for e in bob.list(status=None))
    for query in QUERIES:
        hits = bob.search(query, k=10)
        assert {h.edit.id for h in hits} == b_ids  # all of B's (k is larger), none of A's
        assert all(h.edit.namespace == "bob" for h in hits)
    events = bob.history()
    assert {ev.edit_id for ev in events} == b_ids and {ev.namespace for ev in events} == {"bob"}
    stats = bob.stats()
    assert stats["edits"] == 2 and stats["by_status"]["active"] == 2 and stats["events"] == 2
    # and A is still A
    assert {e.id for e in alice.list(status=None)} == a_ids
    for query in QUERIES:
        assert {h.edit.id for h in alice.search(query, k=10)} <= a_ids
    assert alice.stats()["edits"] == 3


def test_same_subject_and_relation_does_not_supersede_across_namespaces(two):
    alice, bob, a_edits = two
    b_first = bob.add(subject="france", prompt=CAPITAL, target="Nice")
    assert b_first.supersedes is None
    assert alice.get(a_edits[0].id).status == "active"
    assert [ev.action for ev in alice.history(a_edits[0].id)] == ["add"]
    b_second = bob.add(subject="France", prompt=CAPITAL, target="Lille")  # within B it does supersede
    assert b_second.supersedes == b_first.id
    assert alice.get(a_edits[0].id).status == "active"
    # retracting B's newer edit restores B's older one, never A's
    bob.retract(b_second.id)
    assert bob.get(b_first.id).status == "active"
    assert [ev.action for ev in alice.history(a_edits[0].id)] == ["add"]


@pytest.mark.parametrize("op", ["get", "retract", "history"])
def test_get_retract_history_of_a_foreign_id_raise_and_change_nothing(two, op):
    alice, bob, a_edits = two
    bob.add(statement="Bob's own note.")
    before_a, before_b = state(alice), state(bob)
    for edit in a_edits:
        call = {"get": lambda: bob.get(edit.id), "retract": lambda: bob.retract(edit.id, reason="not mine"),
                "history": lambda: bob.history(edit.id)}[op]
        with pytest.raises(EditNotFound) as caught:
            call()
        assert caught.value.namespace == "bob" and caught.value.edit_id == edit.id
        assert "'bob'" in str(caught.value) and edit.id in str(caught.value)
    assert state(alice) == before_a and state(bob) == before_b
    assert alice.get(a_edits[0].id).status == "active"


def test_supersedes_cannot_reach_into_another_namespace(two):
    alice, bob, a_edits = two
    before = state(alice)
    with pytest.raises(EditNotFound):
        bob.add(statement="The coffee machine moved.", supersedes=a_edits[1].id)
    assert bob.list(status=None) == [] and state(alice) == before


@pytest.mark.parametrize("as_dict", [False, True])
def test_an_edit_of_namespace_a_is_refused_by_memory_b(two, as_dict):
    alice, bob, a_edits = two
    before = state(alice)
    edit = Edit(statement="Smuggled in.", namespace="alice")
    with pytest.raises(EditError) as caught:
        bob.add(edit.to_dict() if as_dict else edit)
    err = caught.value
    assert err.field == "namespace" and "'alice'" in str(err) and "with_namespace" in str(err)
    with pytest.raises(EditError):
        bob.add_many([Edit(statement="Fine."), edit])
    assert bob.list(status=None) == [] and state(alice) == before
    # the edit as stored by A itself, handed to B, is refused as well
    with pytest.raises(EditError):
        bob.add(alice.get(a_edits[0].id))
    # with its namespace matching, or left out, it is accepted
    assert bob.add(Edit(statement="Mine.", namespace="bob")).namespace == "bob"


def test_isolation_survives_reopening_and_separate_indexes(open_memory, db_path, tmp_path):
    first = open_memory(db_path, namespace="alice")
    a = first.add(statement="The coffee machine is on the third floor.")
    first.with_namespace("bob").add(statement="The tea kettle is in the kitchen.")
    first.search("coffee", k=3)
    first.with_namespace("bob").search("tea", k=3)
    first.close()
    if not db_path.startswith("postgresql://"):  # PostgreSQL searches in SQL: no index files
        files = sorted(p.name for p in (tmp_path / "memory.db-index").iterdir())
        assert len(files) == 2  # one index file per namespace
    bob = open_memory(db_path, namespace="bob")
    hits = bob.search("Where is the coffee machine?", k=5)
    assert [h.edit.namespace for h in hits] == ["bob"] and a.id not in {h.edit.id for h in hits}
    alice = bob.with_namespace("alice")
    assert [h.edit.id for h in alice.search("Where is the coffee machine?", k=5)] == [a.id]


def test_bad_namespace_names_are_refused(db_path, embedder):
    for bad in ("", "   ", None, 5, "x" * 201):
        with pytest.raises(ValueError) as caught:
            Memory(db_path, namespace=bad, embedder=embedder)
        assert "namespace" in str(caught.value)
