"""One Memory shared by several threads (as in a web server) stays consistent."""

import threading

from conftest import BruteForce, assert_same_ranking


def test_threads_adding_and_searching_one_memory(open_memory, db_path, embedder):
    memory = open_memory(db_path)
    batches = [[{"statement": f"Worker {w} filed report number {b * 5 + i} about the {topic}."}
                for i in range(5)]
               for w, topic in enumerate(["harbour", "library"]) for b in range(6)]
    errors: list[BaseException] = []
    done = threading.Event()

    def write(my_batches):
        try:
            for batch in my_batches:
                memory.add_many(batch)
        except BaseException as err:  # reported below, not swallowed
            errors.append(err)

    def read():
        try:
            while not done.is_set():
                listed = memory.list()
                assert len(listed) % 5 == 0  # only whole batches are ever visible
                memory.search("a report about the harbour", k=3)
                memory.stats()
        except BaseException as err:
            errors.append(err)

    writers = [threading.Thread(target=write, args=(batches[w * 6:(w + 1) * 6],)) for w in range(2)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join(timeout=120)
    done.set()
    for t in readers:
        t.join(timeout=30)
    assert not errors, errors
    active = memory.list()
    assert len(active) == 60 and len({e.statement for e in active}) == 60
    expected = BruteForce(embedder, active)
    assert_same_ranking(memory.search("a report about the library", k=5), expected.top("a report about the library", 5), tol=1e-5)
