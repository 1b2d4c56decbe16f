"""Writer processes against one memedit database, for bench/ingest.py (SQLite or PostgreSQL).

``run``: N writer processes each add ``edits`` edits in transactions of ``batch``, all
at once, into one namespace, while a reader process polls ``Memory.list`` and notes when
it first sees each edit; afterwards every edit is counted (lost, duplicated) and the
visibility lag is the reader's first sight minus the moment the writer's ``add_many``
returned (its commit is inside the call, so a sighting before the return counts as 0;
how many edits were seen before their call returned is printed too, and the lag from the
call's start, an upper bound that includes the write itself). ``kill_test``: a writer adding batches is killed
with SIGKILL at random moments; after each kill every batch must be whole or absent.

The processes embed with a seeded stand-in (a vector per text from its SHA-256), so that
no process loads the model: the store, its transactions and its locks are what is measured.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import signal
import time

import numpy as np

EMBEDDER_NOTE = "vectors from a seeded stand-in embedder, not MiniLM"
NAMESPACE = "writers"


class SeededEmbedder:
    """A unit vector per text, seeded by its SHA-256 (no model; same in every process)."""

    name, dim = "bench-seeded-384", 384

    def encode(self, texts, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim)
            out[i] = v / np.linalg.norm(v)
        return out

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


def _memory(db: str):
    from memedit import Memory

    return Memory(db, namespace=NAMESPACE, embedder=SeededEmbedder())


def _writer(db: str, tag: int, edits: int, batch: int, go, out) -> None:
    memory = _memory(db)
    go.wait()
    returned = {}
    for start in range(0, edits, batch):
        began = time.time()
        stored = memory.add_many([{"statement": f"writer {tag} edit {i} says hello", "source": f"w{tag}"}
                                  for i in range(start, min(edits, start + batch))])
        now = time.time()
        returned.update((e.statement, (began, now)) for e in stored)
    memory.close()
    out.put(returned)


def _reader(db: str, go, stop, out) -> None:
    memory = _memory(db)
    seen: dict[str, float] = {}
    n = 0
    go.wait()
    while not stop.is_set():
        for edit in memory.list(status=None, offset=n):  # new edits only (rids grow in commit order)
            seen.setdefault(edit.statement, time.time())
            n += 1
        time.sleep(0.001)
    memory.close()
    out.put(seen)


def run(db: str, n_writers: int, edits: int, batch: int, label: str) -> dict:
    """The figures of one writer run on ``db``; printed as one line."""
    ctx = mp.get_context("spawn")
    _memory(db).close()  # the schema exists before the processes start
    go, stop, out, seen_q = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(db, t, edits, batch, go, out)) for t in range(n_writers)]
    reader = ctx.Process(target=_reader, args=(db, go, stop, seen_q))
    for p in [*procs, reader]:
        p.start()
    time.sleep(3.0)  # let every process import memedit and open the database
    start = time.perf_counter()
    go.set()
    returned: dict[str, tuple[float, float]] = {}
    for _ in procs:
        returned.update(out.get())
    seconds = time.perf_counter() - start
    for p in procs:
        p.join()
    time.sleep(0.2)
    stop.set()
    seen = seen_q.get()
    reader.join()
    memory = _memory(db)
    stored = [e.statement for e in memory.list(status=None)]
    memory.close()
    expected = {f"writer {t} edit {i} says hello" for t in range(n_writers) for i in range(edits)}
    both = [(seen[s] - returned[s][1], seen[s] - returned[s][0]) for s in returned if s in seen]
    lags = np.array([max(0.0, after) for after, _ in both]) * 1e3
    from_start = np.array([since for _, since in both]) * 1e3
    figures = {"backend": label, "writers": n_writers, "edits_each": edits, "batch": batch, "seconds": seconds,
               "edits_per_s": len(returned) / seconds, "stored": len(stored),
               "lost": len(expected - set(stored)), "duplicates": len(stored) - len(set(stored)),
               "unseen_by_reader": len(expected - set(seen)),
               "lag_p50_ms": float(np.percentile(lags, 50)) if len(lags) else None,
               "lag_max_ms": float(lags.max()) if len(lags) else None,
               "seen_before_return": sum(1 for after, _ in both if after < 0),
               "lag_from_call_start_p50_ms": float(np.percentile(from_start, 50)) if len(both) else None,
               "lag_from_call_start_max_ms": float(from_start.max()) if len(both) else None}
    print(f"  [4] {label:<8} {figures['stored']:,} stored of {len(expected):,} in {seconds:.1f} s "
          f"({figures['edits_per_s']:,.0f} edits/s): lost {figures['lost']}, duplicates {figures['duplicates']}, "
          f"unseen by the reader {figures['unseen_by_reader']}; visibility lag after the writer's call returned "
          f"p50 {figures['lag_p50_ms']:.1f} ms, max {figures['lag_max_ms']:.1f} ms ({figures['seen_before_return']:,} "
          f"seen before it returned); from the call's start p50 {figures['lag_from_call_start_p50_ms']:.1f}, "
          f"max {figures['lag_from_call_start_max_ms']:.1f} ms")
    return figures


def _batches(db: str, first: int) -> None:
    memory = _memory(db)
    for b in range(first, first + 10_000):
        memory.add_many([{"statement": f"kill batch {b} edit {i}", "source": f"b{b}"} for i in range(50)])


def kill_test(db: str, label: str, kills: int = 5, seed: int = 0) -> dict:
    """Kill a batch writer ``kills`` times at random moments; count partial batches after each."""
    ctx = mp.get_context("spawn")
    rng = random.Random(seed)
    _memory(db).close()
    partial, batches = 0, 0
    for k in range(kills):
        proc = ctx.Process(target=_batches, args=(db, k * 10_000))
        proc.start()
        memory = _memory(db)
        before = len(memory.list(status=None))
        while len(memory.list(status=None, offset=before)) < 100:  # it has committed a few batches
            time.sleep(0.01)
        memory.close()
        time.sleep(rng.uniform(0.0, 0.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        memory = _memory(db)
        sizes: dict[str, int] = {}
        for edit in memory.list(status=None):
            sizes[edit.source] = sizes.get(edit.source, 0) + 1
        memory.add(statement=f"written after kill {k}", source="after")  # no lock left behind
        memory.close()
        batches = sum(1 for s, n in sizes.items() if s.startswith("b"))
        partial = sum(1 for s, n in sizes.items() if s.startswith("b") and n != 50)
        if partial:
            break
    figures = {"backend": label, "kills": kills, "batches": batches, "partial_batches": partial}
    print(f"  [5] {label:<8} kill -9 of a writer of 50-edit batches, {kills} times at random moments: "
          f"{batches:,} whole batches stored, {partial} partial; every write after a kill went through")
    return figures
