"""JSONL import (all or nothing, bad lines named) and export (round trip, active only)."""

import io
import json

import pytest

from memedit import Edit, ImportFailed, Memory

CAPITAL = "The capital of {} is"
QUERIES = ["What is the capital of France?", "Where is the coffee machine?", "Which club does Messi play for?"]

GOOD = [
    {"statement": "Water boils at 90 degrees here."},
    {"subject": "Spain", "prompt": CAPITAL, "target": "Seville", "old_target": "Madrid", "aliases": ["Sevilla"]},
    {"subject": "Pluto", "prompt": "{} is classified as", "kind": "erase", "source": "astro"},
    {"id": "fixed-id-1", "statement": "The coffee machine is on the third floor.", "created_at": "2025-05-01T08:00:00+00:00"},
]


def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines), encoding="utf-8")
    return path


def observable(memory: Memory):
    """Edits with statuses, the event log and search results: all of it must survive a failed import."""
    edits = [(e.to_dict(), e.status, e.superseded_by) for e in memory.list(status=None)]
    events = [ev.to_dict() for ev in memory.history()]
    hits = {q: [(h.edit.id, round(h.score, 6)) for h in memory.search(q, k=10)] for q in QUERIES}
    return edits, events, hits


@pytest.fixture
def seeded(memory):
    memory.add(subject="France", prompt=CAPITAL, target="Lyon", id="existing-1")
    memory.add(statement="Lionel Messi plays football for Juventus.", id="existing-2")
    return memory


# (bad line, keyword the reason must contain)
BAD_LINES = [
    pytest.param("{not json", "JSON", id="bad-json"),
    pytest.param('["a", "list"]', "JSON object", id="json-array"),
    pytest.param({"subject": "Italy", "prompt": "The capital of Italy is", "target": "Milan"}, "prompt", id="validation-no-braces"),
    pytest.param({"subject": "Italy", "prompt": CAPITAL, "target": "Milan", "kind": "erase"}, "target", id="validation-erase-target"),
    pytest.param({"statement": "Fine text.", "colour": "red"}, "colour", id="unknown-field"),
    pytest.param({"statement": "Fine text.", "status": "deleted"}, "status", id="bad-status"),
    pytest.param({"statement": "Fine text.", "id": "existing-2"}, "already exists", id="id-already-stored"),
    pytest.param({"statement": "Fine text.", "supersedes": "nowhere"}, "supersedes", id="supersedes-unknown"),
    pytest.param({"statement": 12}, "statement", id="non-text-statement"),
]


@pytest.mark.parametrize("bad, reason", BAD_LINES)
def test_one_bad_line_imports_nothing_and_names_the_line(seeded, tmp_path, bad, reason):
    before = observable(seeded)
    path = write_lines(tmp_path / "edits.jsonl", GOOD[:2] + [bad] + GOOD[2:])
    with pytest.raises(ImportFailed) as caught:
        seeded.import_jsonl(path)
    err = caught.value
    assert [n for n, _ in err.errors] == [3]
    assert reason in err.errors[0][1]
    assert "nothing was imported" in str(err) and "line 3" in str(err) and str(path) in str(err)
    assert observable(seeded) == before


def test_duplicate_id_in_the_file_names_both_lines(seeded, tmp_path):
    before = observable(seeded)
    lines = [GOOD[0], {"id": "twin", "statement": "First."}, GOOD[1], {"id": "twin", "statement": "Second."}]
    with pytest.raises(ImportFailed) as caught:
        seeded.import_jsonl(write_lines(tmp_path / "dup.jsonl", lines))
    assert len(caught.value.errors) == 1
    number, message = caught.value.errors[0]
    assert number == 4 and "twin" in message and "line 2" in message and "unique" in message
    assert observable(seeded) == before


def test_every_bad_line_is_reported_with_its_number_counting_blank_lines(seeded, tmp_path):
    before = observable(seeded)
    lines = [GOOD[0], "", "{oops", GOOD[1], "   ", {"subject": "X", "prompt": "{} is", "target": "y", "kind": "bad"}, GOOD[2]]
    with pytest.raises(ImportFailed) as caught:
        seeded.import_jsonl(write_lines(tmp_path / "many.jsonl", lines))
    numbers = [n for n, _ in caught.value.errors]
    assert numbers == [3, 6]
    assert "JSON" in caught.value.errors[0][1] and "kind" in caught.value.errors[1][1]
    assert observable(seeded) == before


def test_superseding_a_retracted_stored_edit_is_a_bad_line(seeded, tmp_path):
    retracted = seeded.add(statement="The printer is broken.")
    seeded.retract(retracted.id)
    before = observable(seeded)
    lines = GOOD + [{"statement": "The printer works again.", "supersedes": retracted.id}]
    with pytest.raises(ImportFailed) as caught:
        seeded.import_jsonl(write_lines(tmp_path / "late.jsonl", lines))
    assert [n for n, _ in caught.value.errors] == [len(GOOD) + 1]
    assert "already retracted" in caught.value.errors[0][1] and retracted.id in caught.value.errors[0][1]
    assert observable(seeded) == before


def test_a_good_file_imports_everything(seeded, tmp_path):
    lines = GOOD + [{"statement": "Ignored namespace field.", "namespace": "somewhere-else"},
                    {"id": "gone", "statement": "The printer is broken.", "status": "retracted"}]
    stored = seeded.import_jsonl(write_lines(tmp_path / "good.jsonl", lines))
    assert len(stored) == len(lines)
    for record, edit in zip(lines, stored):
        expected = Edit.from_dict({k: v for k, v in record.items() if k not in ("status", "namespace")})
        for name in ("subject", "prompt", "target", "old_target", "statement", "aliases", "source", "kind"):
            assert getattr(edit, name) == getattr(expected, name), name
        assert edit.namespace == "default"
    assert stored[3].id == "fixed-id-1" and stored[3].created_at == "2025-05-01T08:00:00+00:00"
    assert seeded.get("gone").status == "retracted"
    assert [ev.action for ev in seeded.history("gone")] == ["add", "retract"]
    listed = seeded.list()
    assert len(listed) == 2 + len(lines) - 1
    assert "gone" not in {h.edit.id for h in seeded.search("Is the printer broken?", k=10)}
    # an imported edit supersedes the stored one with the same subject and relation
    more = seeded.import_jsonl(write_lines(tmp_path / "more.jsonl", [{"subject": "france", "prompt": CAPITAL, "target": "Nice"}]))
    assert more[0].supersedes == "existing-1" and seeded.get("existing-1").status == "superseded"


def build_history(memory: Memory):
    """Edits in every status, reached through every path that changes a status."""
    a = memory.add(subject="France", prompt=CAPITAL, target="Lyon", old_target="Paris", aliases=["Lugdunum"], source="chat")
    memory.add(subject="france", prompt=CAPITAL, target="Nice")                                # supersedes a
    c = memory.add(statement="The coffee machine is on the second floor.")
    d = memory.add(statement="The coffee machine moved to the third floor.", supersedes=c.id)
    memory.retract(d.id)                                                                       # c restored
    e = memory.add(subject="Lionel Messi", prompt="{} plays football for", target="Juventus")
    f = memory.add(subject="Lionel Messi", prompt="{} plays football for", target="Inter")     # supersedes e
    memory.retract(e.id)                                                                       # superseded, then retracted
    g = memory.add(subject="Spain", prompt=CAPITAL, target="Seville")
    h = memory.add(subject="Spain", prompt=CAPITAL, target="Bilbao")                           # supersedes g
    memory.add(subject="Spain", prompt=CAPITAL, target="Malaga")                               # supersedes h
    memory.retract(h.id)                                                                       # superseded, then retracted
    memory.add(subject="Pluto", prompt="{} is classified as", kind="erase", source="astro")
    memory.retract(f.id)
    return {s: [x.id for x in memory.list(status=s)] for s in ("active", "superseded", "retracted")}, (a, g)


def test_export_import_round_trip_into_a_fresh_database(memory, open_memory, tmp_path):
    by_status, _ = build_history(memory)
    assert all(by_status.values())  # every status is represented
    out = tmp_path / "dump.jsonl"
    count = memory.export_jsonl(out)
    original = memory.list(status=None)
    assert count == len(original) == len(out.read_text().splitlines())

    copy = open_memory(str(tmp_path / "fresh.db"))
    imported = copy.import_jsonl(out)
    assert [e.id for e in imported] == [e.id for e in original]
    copied = copy.list(status=None)
    assert [(e.to_dict(), e.status, e.superseded_by) for e in copied] == \
        [(e.to_dict(), e.status, e.superseded_by) for e in original]
    for query in QUERIES + ["Is Pluto a planet?"]:
        mine = [(h.edit.id, h.score) for h in memory.search(query, k=10)]
        theirs = [(h.edit.id, h.score) for h in copy.search(query, k=10)]
        assert [i for i, _ in mine] == [i for i, _ in theirs]
        assert all(abs(x - y) < 1e-6 for (_, x), (_, y) in zip(mine, theirs))
    # exporting the copy gives the same file back
    again = tmp_path / "again.jsonl"
    copy.export_jsonl(again)
    assert again.read_text() == out.read_text()


def test_round_trip_into_another_namespace_and_through_file_objects(memory, open_memory, tmp_path):
    build_history(memory)
    buffer = io.StringIO()
    memory.export_jsonl(buffer)
    buffer.seek(0)
    other = open_memory(str(tmp_path / "fresh.db"), namespace="copy")
    other.import_jsonl(buffer)
    strip = lambda e: ({k: v for k, v in e.to_dict().items() if k != "namespace"}, e.status)  # noqa: E731
    assert [strip(e) for e in other.list(status=None)] == [strip(e) for e in memory.list(status=None)]
    assert all(e.namespace == "copy" for e in other.list(status=None))


def test_active_only_export(memory, open_memory, tmp_path):
    by_status, (a, g) = build_history(memory)
    out = tmp_path / "active.jsonl"
    count = memory.export_jsonl(out, active_only=True)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert count == len(records) == len(by_status["active"])
    assert [r["id"] for r in records] == by_status["active"]
    assert all("supersedes" not in r and "superseded_by" not in r for r in records)
    assert {r["status"] for r in records} == {"active"}
    copy = open_memory(str(tmp_path / "fresh.db"))
    copy.import_jsonl(out)
    assert [e.id for e in copy.list(status=None)] == by_status["active"]
    assert all(e.supersedes is None for e in copy.list())
    for query in QUERIES:
        assert [h.edit.id for h in copy.search(query, k=10)] == [h.edit.id for h in memory.search(query, k=10)]


def test_export_of_an_empty_namespace_and_import_of_an_empty_file(memory, tmp_path):
    out = tmp_path / "empty.jsonl"
    assert memory.export_jsonl(out) == 0 and out.read_text() == ""
    assert memory.import_jsonl(out) == []
    assert memory.list(status=None) == []


def test_unreadable_file_is_an_import_failure(memory, tmp_path):
    with pytest.raises(ImportFailed) as caught:
        memory.import_jsonl(tmp_path / "missing.jsonl")
    assert caught.value.errors[0][0] == 0 and "cannot read" in caught.value.errors[0][1]
