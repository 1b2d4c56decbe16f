"""The FAISS index is never trusted: missing, corrupt, stale or foreign files are repaired
from the store, and the HNSW path agrees with brute force on active edits."""

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from memedit.index import MAGIC

from conftest import STATEMENTS as SAMPLE_STATEMENTS, BruteForce, HashEmbedder, assert_same_ranking

STATEMENTS = SAMPLE_STATEMENTS[:10]  # as many as the other database's statements below

QUERIES = ["Where can I get a coffee?", "Which club does Messi play for?", "What is the capital city of France?",
           "How tall is Everest?", "When does the office close?"]


def index_file(db_path) -> Path:
    files = list(Path(f"{db_path}-index").glob("*.faiss"))
    assert len(files) == 1, files
    return files[0]


def header_of(path: Path) -> dict:
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    (size,) = struct.unpack(">I", data[len(MAGIC):len(MAGIC) + 4])
    return json.loads(data[len(MAGIC) + 4:len(MAGIC) + 4 + size])


def results(memory, k=4):
    return {q: [(h.edit.id, h.score) for h in memory.search(q, k=k)] for q in QUERIES}


def assert_same_results(got, expected, tol=1e-6):
    assert got.keys() == expected.keys()
    for q in expected:
        assert [i for i, _ in got[q]] == [i for i, _ in expected[q]], q
        assert all(abs(a - b) <= tol for (_, a), (_, b) in zip(got[q], expected[q])), q


def assert_matches_store(memory, embedder, k=4):
    """Search results equal a numpy brute force over the store's active edits."""
    expected = BruteForce(embedder, memory.list())
    for q in QUERIES:
        assert_same_ranking(memory.search(q, k=k), expected.top(q, k), tol=1e-5)


def populate(memory, statements=STATEMENTS):
    stored = memory.add_many([{"statement": s} for s in statements])
    memory.retract(stored[4].id)
    memory.add(statement="The Eiffel Tower is made of cheese.", supersedes=stored[3].id)
    return stored


@pytest.fixture
def saved(open_memory, db_path):
    """A database with a saved, correct index; returns the search results it gave."""
    memory = open_memory(db_path)
    populate(memory)
    baseline = results(memory)
    memory.close()
    assert index_file(db_path).exists()
    return baseline


def test_a_clean_reopen_loads_the_saved_index_without_rebuilding(saved, open_memory, db_path, embedder):
    memory = open_memory(db_path)
    assert memory.index.rebuild_reason is None
    assert_same_results(results(memory), saved)
    assert_matches_store(memory, embedder)


def _flip_middle(path: Path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    path.write_bytes(bytes(data))


def _drop_header_fields(path: Path) -> None:
    """A header that still carries the payload's true checksum but lacks the other fields."""
    data = path.read_bytes()
    (size,) = struct.unpack(">I", data[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    header = {"sha256": json.loads(data[start:start + size])["sha256"]}
    raw = json.dumps(header).encode()
    path.write_bytes(MAGIC + struct.pack(">I", len(raw)) + raw + data[start + size:])


DAMAGE = {
    "deleted": (lambda p: p.unlink(), "missing"),
    "folder-deleted": (lambda p: shutil.rmtree(p.parent), "missing"),
    "bytes-overwritten-in-the-middle": (_flip_middle, "corrupt"),
    "truncated-to-half": (lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]), "corrupt"),
    "truncated-inside-the-header": (lambda p: p.write_bytes(p.read_bytes()[:len(MAGIC) + 10]), "corrupt"),
    "emptied": (lambda p: p.write_bytes(b""), "corrupt"),
    "replaced-with-garbage": (lambda p: p.write_bytes(os.urandom(len(p.read_bytes()))), "corrupt"),
    "payload-replaced-keeping-magic": (lambda p: p.write_bytes(MAGIC + os.urandom(4000)), "corrupt"),
    "header-fields-missing": (_drop_header_fields, "corrupt"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_missing_or_corrupt_index_file_is_rebuilt_with_the_same_results(saved, open_memory, db_path, embedder, damage):
    spoil, reason = DAMAGE[damage]
    spoil(index_file(db_path))
    memory = open_memory(db_path)
    assert memory.index.rebuild_reason is not None and reason in memory.index.rebuild_reason
    assert_same_results(results(memory), saved)
    assert_matches_store(memory, embedder)
    memory.close()
    # the repaired index was saved: the next open trusts it
    again = open_memory(db_path)
    assert again.index.rebuild_reason is None
    assert_same_results(results(again), saved)


def test_an_index_not_saved_by_another_writer_is_caught_up_from_the_event_log(saved, open_memory, db_path, embedder):
    writer = open_memory(db_path)
    writer.search("coffee", k=1)  # opens (and loads) the index
    new = writer.add_many([{"statement": "The cafeteria serves pizza on Tuesdays."},
                           {"statement": "Bob's manager is Carol."}])
    writer.retract(writer.list()[0].id)
    writer.add(subject="France", prompt="The capital of {} is", target="Nice")
    # writer stays open and never saves: the file on disk is behind the store
    stale_seq = header_of(index_file(db_path))["last_seq"]
    assert stale_seq < writer.revision()

    reader = open_memory(db_path)
    assert reader.index.rebuild_reason is None  # replayed, not rebuilt
    assert reader.index.last_seq == writer.revision()
    assert_matches_store(reader, embedder)
    hits = reader.search("Who is Bob's manager?", k=1)
    assert hits[0].edit.id == new[1].id


def test_an_old_copy_of_the_index_file_put_back_is_caught_up(saved, open_memory, db_path, embedder):
    path = index_file(db_path)
    old = path.read_bytes()
    memory = open_memory(db_path)
    listed = memory.list()
    memory.retract(listed[0].id)
    memory.retract(listed[1].id)
    memory.add_many([{"statement": "The cafeteria serves pizza on Tuesdays."}, {"statement": "Bob's manager is Carol."}])
    memory.close()
    assert path.read_bytes() != old
    path.write_bytes(old)
    reopened = open_memory(db_path)
    assert_matches_store(reopened, embedder)
    retracted = {listed[0].id, listed[1].id}
    for q in QUERIES:
        assert not retracted & {h.edit.id for h in reopened.search(q, k=20)}


@pytest.mark.parametrize("other_events", ["same-number-of-events", "more-events"])
def test_an_index_file_from_another_database_is_detected(saved, open_memory, db_path, tmp_path, embedder, other_events):
    other_path = str(tmp_path / "other.db")
    other = open_memory(other_path)
    other_statements = ["Cats purr when they are happy.", "Dogs bark at the postman.", "Cows moo in the field.",
                        "Owls hoot at night.", "Frogs croak in the pond.", "Bees hum in the garden.",
                        "Lions roar in the savanna.", "Wolves howl at the moon.", "Horses neigh in the stable.",
                        "Ducks quack on the lake."]
    populate(other, other_statements)
    if other_events == "more-events":
        other.add(statement="Snakes hiss in the grass.")
    assert other.revision() >= open_memory(db_path).revision()
    other.close()
    shutil.copyfile(index_file(other_path), index_file(db_path))

    memory = open_memory(db_path)
    assert memory.index.rebuild_reason is not None and "another database" in memory.index.rebuild_reason
    assert_same_results(results(memory), saved)
    assert_matches_store(memory, embedder)


def test_an_index_file_of_another_namespace_is_detected(open_memory, db_path, embedder):
    memory = open_memory(db_path)
    memory.add_many([{"statement": s} for s in STATEMENTS[:5]])
    memory.with_namespace("other").add_many([{"statement": s} for s in STATEMENTS[5:]])
    memory.search("coffee", k=1)
    memory.with_namespace("other").search("coffee", k=1)
    memory.close()
    files = sorted(Path(f"{db_path}-index").glob("*.faiss"), key=lambda p: header_of(p)["namespace"])
    assert [header_of(p)["namespace"] for p in files] == ["default", "other"]
    shutil.copyfile(files[1], files[0])  # 'other' now sits where 'default' belongs
    reopened = open_memory(db_path)
    assert "another namespace" in reopened.index.rebuild_reason
    assert_matches_store(reopened, embedder)


def test_an_index_made_with_another_embedder_is_rebuilt(open_memory, db_path, embedder):
    hashed = open_memory(db_path, embedder=HashEmbedder())
    hashed.add_many([{"statement": s} for s in STATEMENTS])
    hashed.search("coffee", k=1)
    hashed.close()
    assert header_of(index_file(db_path))["embedder"] == HashEmbedder.name
    memory = open_memory(db_path)
    assert "embedder" in memory.index.rebuild_reason
    assert_matches_store(memory, embedder)


def _people(n):
    names = ["Ada", "Ben", "Chloe", "Dmitri", "Esra", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kemal", "Lena"]
    jobs = ["baker", "pilot", "nurse", "plumber", "violinist", "chemist", "gardener", "lawyer", "carpenter", "surgeon"]
    cities = ["Paris", "Nairobi", "Osaka", "Lima", "Oslo", "Cairo", "Denver"]
    out = []
    for i in range(n):
        out.append(f"{names[i % len(names)]} works as a {jobs[(i // len(names)) % len(jobs)]} "
                   f"in {cities[(i * 5) % len(cities)]} and was born in {1950 + i}.")
    assert len(set(out)) == n
    return out


HNSW_QUERIES = ["Who is a baker in Paris?", "Which surgeon lives in Oslo?", "Ada the pilot",
                "Someone born in 1999", "a violinist from Cairo", "plumbers in Lima"]


def test_hnsw_index_matches_brute_force_on_active_edits(open_memory, storage, embedder):
    """On SQLite (FAISS HNSW) and PostgreSQL (pgvector HNSW) alike."""
    db_path = storage
    memory = open_memory(db_path, hnsw_threshold=50)
    statements = _people(120)
    first = memory.add_many([{"statement": s} for s in statements[:40]])
    memory.search("baker", k=1)
    assert memory.index.kind == "flat"  # below the threshold
    rest = memory.add_many([{"statement": s} for s in statements[40:]])
    assert memory.index.kind == "hnsw"  # grew past it
    stored = first + rest
    for edit in stored[::12]:
        memory.retract(edit.id)
    # supersede two, then retract one superseder: its predecessor is restored into the graph
    newer = memory.add(statement="Ben works as an astronaut in Paris and was born in 1951.", supersedes=stored[1].id)
    memory.add(statement="Chloe works as a firefighter in Osaka and was born in 1952.", supersedes=stored[2].id)
    memory.retract(newer.id)
    assert memory.get(stored[1].id).status == "active"
    active = memory.list()
    assert len(active) == 120 - 10 - 2 + 1 + 1  # retracted 10, superseded 2, restored 1, 1 superseder
    assert memory.stats()["index"] == {"kind": "hnsw", "size": len(active)}

    expected = BruteForce(embedder, active)
    inactive = {e.id for e in memory.list(status=None)} - {e.id for e in active}
    for q in HNSW_QUERIES:
        hits = memory.search(q, k=8)
        ids = [h.edit.id for h in hits]
        assert len(ids) == len(set(ids)) == 8  # no edit twice, none missing
        assert not inactive & set(ids)
        assert_same_ranking(hits, expected.top(q, 8), tol=1e-5)
    hits = memory.search(statements[1], k=1)
    assert hits[0].edit.id == stored[1].id and hits[0].score > 0.999

    memory.close()
    reopened = open_memory(db_path, hnsw_threshold=50)
    assert reopened.index.kind == "hnsw" and reopened.index.rebuild_reason is None
    for q in HNSW_QUERIES:
        assert_same_ranking(reopened.search(q, k=8), expected.top(q, 8), tol=1e-5)


def test_a_flat_index_past_the_threshold_moves_to_hnsw_on_open(open_memory, db_path, embedder):
    memory = open_memory(db_path, hnsw_threshold=1_000)
    memory.add_many([{"statement": s} for s in _people(80)])
    memory.search("baker", k=1)
    assert memory.index.kind == "flat"
    memory.close()  # saved as a flat index

    reopened = open_memory(db_path, hnsw_threshold=50)  # e.g. a lower threshold in a newer release
    assert reopened.index.kind == "hnsw" and len(reopened.index.live) == 80
    expected = BruteForce(embedder, reopened.list())
    for q in HNSW_QUERIES:
        assert_same_ranking(reopened.search(q, k=8), expected.top(q, 8), tol=1e-5)
    reopened.close()
    assert open_memory(db_path, hnsw_threshold=50).index.kind == "hnsw"  # and it was saved that way
