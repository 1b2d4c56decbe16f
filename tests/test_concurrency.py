"""Several processes on one database (SQLite and PostgreSQL alike): a reader only ever sees whole batches, its index
catches up with what a writer adds after it opened, and concurrent writers queue.

The subprocesses use the deterministic HashEmbedder of conftest (no model to load) under
its own name, in every process alike.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

from memedit import Memory

from conftest import HashEmbedder

TESTS = Path(__file__).resolve().parent
BATCH = 5

SCRIPT = r'''
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from conftest import HashEmbedder
from memedit import Memory

role, db, batch, batches, tag = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
ready, done = Path(sys.argv[7]), Path(sys.argv[8])
deadline = time.monotonic() + 60
memory = Memory(db, embedder=HashEmbedder())


def statement(tag, b, i):
    return f"{tag} batch{b} item{i} token{tag}x{b}x{i}"


if role == "writer":
    ready.touch()
    while not done.exists() and time.monotonic() < deadline:  # start together with the other writer
        time.sleep(0.005)
    for b in range(batches):
        memory.add_many([{"statement": statement(tag, b, i), "source": f"{tag}-{b}"} for i in range(batch)])
    memory.close()
    print(json.dumps({"written": batches * batch}))
    sys.exit(0)

# reader
memory.search("anything at all", k=1)  # the index is open before the writer starts
ready.touch()
violations, counts, iterations, final = [], set(), 0, None


def check(last_pass):
    before = memory.list(status=None)
    stats = memory.stats()
    after = memory.list(status=None)
    n = len(before)
    counts.add(n)
    problems = []
    if n % batch:
        problems.append(f"list shows {n} edits, not whole batches of {batch}")
    groups = {}
    for e in before:
        groups.setdefault(e.source, []).append(e)
    for source, members in groups.items():
        b = source.rsplit("-", 1)[1]
        if sorted(e.statement for e in members) != sorted(statement(source.rsplit("-", 1)[0], b, i) for i in range(batch)):
            problems.append(f"batch {source} is partial: {len(members)} of {batch}")
    if any(e.status != "active" for e in before):
        problems.append("an edit is not active")
    if stats["edits"] % batch or stats["edits"] != sum(stats["by_status"].values()) or stats["events"] != stats["edits"]:
        problems.append(f"stats inconsistent: {stats}")
    if not (n <= stats["edits"] <= len(after)):
        problems.append(f"stats count {stats['edits']} outside list counts {n}..{len(after)}")
    if after:
        newest = after[-1]
        hits = memory.search(newest.statement, k=1)
        if not hits or hits[0].edit.id != newest.id or hits[0].score < 0.999:
            problems.append(f"search did not find the newest edit {newest.id} ({newest.statement})")
        live = len(memory.index.live)
        if live % batch or live < len(after):
            problems.append(f"index holds {live} edits for {len(after)} listed")
    if last_pass:
        for e in after[::batch]:
            hits = memory.search(e.statement, k=1)
            if not hits or hits[0].edit.id != e.id:
                problems.append(f"final search misses {e.id}")
    return n, problems


while time.monotonic() < deadline and iterations < 20000:
    finished = done.exists()  # read before checking, so the last pass sees everything
    iterations += 1
    n, problems = check(last_pass=finished)
    violations.extend(problems)
    if finished:
        final = n
        break
print(json.dumps({"iterations": iterations, "counts": sorted(counts), "violations": violations[:20], "final": final}))
'''


def start(tmp_path, role, db, batches, tag, name):
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    ready, done = tmp_path / f"{name}.ready", tmp_path / f"{name}.done"
    proc = subprocess.Popen([sys.executable, str(script), str(TESTS), role, db, str(BATCH), str(batches), tag,
                             str(ready), str(done)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, ready, done


def wait_ready(proc, ready, limit=60.0):
    end = time.monotonic() + limit
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < end, "the subprocess did not start in time"
        time.sleep(0.02)


def finish(proc, limit=90.0):
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the subprocess did not finish in time: {err[-2000:]}")
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def batch_of(tag, b):
    return [{"statement": f"{tag} batch{b} item{i} token{tag}x{b}x{i}", "source": f"{tag}-{b}"} for i in range(BATCH)]


def test_a_reader_process_sees_only_whole_batches_and_catches_up(tmp_path, storage):
    db = storage
    writer = Memory(db, embedder=HashEmbedder())
    try:
        writer.add_many(batch_of("seed", 0))
        reader, ready, done = start(tmp_path, "reader", db, 0, "-", "reader")
        wait_ready(reader, ready)
        batches = 40
        for b in range(batches):
            writer.add_many(batch_of("main", b))  # one transaction per batch
            time.sleep(0.01)
        done.touch()
        report = finish(reader)
    finally:
        writer.close()
    assert report["violations"] == []
    assert report["final"] == (batches + 1) * BATCH
    # it read while the writer wrote: it saw states between the first and the last
    assert any(BATCH < n < (batches + 1) * BATCH for n in report["counts"]), report["counts"]
    assert all(n % BATCH == 0 for n in report["counts"])


def test_two_writer_processes_queue_and_nothing_is_lost(tmp_path, storage):
    db = storage
    Memory(db, embedder=HashEmbedder()).close()
    batches = 25
    other, ready, go = start(tmp_path, "writer", db, batches, "sub", "writer")
    wait_ready(other, ready)
    memory = Memory(db, embedder=HashEmbedder())
    try:
        memory.search("anything", k=1)
        go.touch()
        for b in range(batches):
            memory.add_many(batch_of("main", b))
        report = finish(other)
        assert report["written"] == batches * BATCH
        listed = memory.list()
        assert len(listed) == 2 * batches * BATCH
        groups = {}
        for e in listed:
            groups.setdefault(e.source, []).append(e.statement)
        assert sorted(groups) == sorted([f"main-{b}" for b in range(batches)] + [f"sub-{b}" for b in range(batches)])
        for source, statements in groups.items():
            tag, b = source.rsplit("-", 1)
            assert sorted(statements) == sorted(x["statement"] for x in batch_of(tag, int(b)))
        # this process's index caught up with the other writer's edits from the event log
        for e in listed[::BATCH]:
            hits = memory.search(e.statement, k=1)
            assert hits[0].edit.id == e.id and hits[0].score > 0.999
        events = memory.history()
        assert len(events) == len(listed) and [ev.seq for ev in events] == sorted(ev.seq for ev in events)
    finally:
        memory.close()
    # both processes saved the index; whichever file is on disk, a fresh open agrees with the store
    fresh = Memory(db, embedder=HashEmbedder())
    try:
        assert sorted(fresh.index.live) == sorted(fresh.index.store.active_rids("default").tolist())
        some = fresh.list()[-1]
        assert fresh.search(some.statement, k=1)[0].edit.id == some.id
    finally:
        fresh.close()


CRASH_SCRIPT = r'''
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from conftest import HashEmbedder
from memedit import Memory

db, inside = sys.argv[2], Path(sys.argv[3])
memory = Memory(db, embedder=HashEmbedder())
for b in range(3):  # three whole batches, committed
    memory.add_many([{"statement": f"committed batch{b} item{i}", "source": f"ok-{b}"} for i in range(10)])
with memory._store.write():  # one transaction: half of a batch, then killed before the rest
    memory.add_many([{"statement": f"doomed item{i}", "source": "doomed"} for i in range(10)])
    inside.touch()
    time.sleep(60)
    memory.add_many([{"statement": f"doomed item{i}", "source": "doomed"} for i in range(10, 20)])
'''


def test_kill_9_of_a_writer_mid_batch_leaves_nothing_partial(tmp_path, storage):
    script, inside = tmp_path / "crash.py", tmp_path / "inside"
    script.write_text(CRASH_SCRIPT)
    watcher = Memory(storage, embedder=HashEmbedder())  # another process's view (opened first: SQLite's
    try:                                                # open waits for the write lock the writer will hold)
        proc = subprocess.Popen([sys.executable, str(script), str(TESTS), storage, str(inside)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_ready(proc, inside)
        assert {e.source for e in watcher.list()} == {"ok-0", "ok-1", "ok-2"}
        proc.kill()  # SIGKILL: no cleanup of any kind in the writer
        proc.wait(timeout=30)
        assert proc.returncode == -9
        listed = watcher.list(status=None)
        assert len(listed) == 30 and {e.source for e in listed} == {"ok-0", "ok-1", "ok-2"}
        assert watcher.stats()["events"] == 30
        assert watcher.search("doomed item3", k=3)[0].edit.source.startswith("ok-")
        # the dead writer's lock is gone: the next write goes through at once
        new = watcher.add(statement="written after the crash")
        assert watcher.get(new.id).status == "active" and len(watcher.list()) == 31
    finally:
        watcher.close()
