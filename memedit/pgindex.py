"""The search of one namespace on PostgreSQL: pgvector in SQL, filtered by namespace.

It follows the event log as ``NamespaceIndex`` does (the same replay keeps the set of
active row ids, so ``sync`` costs one query when nothing changed), but holds no vectors
and writes no file: the search is one SQL query over the ``embeddings`` table, joined to
the namespace's active edits. Below ``PG_HNSW_THRESHOLD`` active edits it is exact (every
active edit of the namespace scored); from there on it walks the HNSW index (inner
product on normalised vectors, made when a namespace first gets that big;
``hnsw.ef_search`` candidates) and falls back to the exact query whenever the walk,
filtered by namespace and status, returns fewer than ``k`` hits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .index import HNSW_THRESHOLD, NamespaceIndex, VectorSource
from .pgstore import EF_SEARCH

# An exact scan in SQL costs ~2 ms per 1,000 edits (bench/ingest.py: 19.5 ms p50 at 10,000),
# ten times FAISS's: a namespace moves to the HNSW walk at 2,000 active edits (or below, if
# Memory's hnsw_threshold is lower).
PG_HNSW_THRESHOLD = 2_000

FROM = ("FROM embeddings e JOIN edits d ON d.rid = e.edit_rid "
        "WHERE d.namespace = ? AND d.status = 'active' AND e.model = ? AND vector_dims(e.vector) = {dim}")


class PgIndex(NamespaceIndex):
    """Nearest-edit search over one namespace's active edits, run by PostgreSQL."""

    def __init__(self, store: Any, namespace: str, embedder: str, dim: int, vectors: VectorSource,
                 folder: Path | None = None, hnsw_threshold: int = HNSW_THRESHOLD) -> None:
        self._hnsw_ready = False  # the HNSW index is made when a namespace first reaches hnsw_threshold
        self._embed_missing(store, namespace, embedder, vectors)
        super().__init__(store, namespace, embedder, dim, vectors, None, min(hnsw_threshold, PG_HNSW_THRESHOLD))
        distance = f"e.vector::vector({int(dim)}) <#> ?::vector({int(dim)})"
        where = FROM.format(dim=int(dim))
        # The HNSW walk gives ef_search candidates of every namespace; the namespace's active ones are kept.
        self._hnsw_sql = (f"SELECT c.edit_rid, -c.distance FROM (SELECT e.edit_rid, {distance} AS distance FROM embeddings e "
                          f"WHERE e.model = ? AND vector_dims(e.vector) = {int(dim)} ORDER BY distance LIMIT {EF_SEARCH}) c "
                          f"JOIN edits d ON d.rid = c.edit_rid WHERE d.namespace = ? AND d.status = 'active' "
                          f"ORDER BY c.distance LIMIT ?")
        # MATERIALIZED keeps the planner off the HNSW index: every active edit is scored.
        self._exact_sql = (f"WITH scored AS MATERIALIZED (SELECT e.edit_rid, {distance} AS distance {where}) "
                           f"SELECT edit_rid, -distance FROM scored ORDER BY distance LIMIT ?")

    @staticmethod
    def _embed_missing(store: Any, namespace: str, embedder: str, vectors: VectorSource) -> None:
        """Store vectors for active edits that have none for this embedder (written under another)."""
        missing = store.rids_without_vector(namespace, embedder)
        if missing:
            matrix = vectors(missing)
            with store.write():
                for rid, vector in zip(missing, matrix):
                    store.put_vector(rid, embedder, vector)

    def _open(self) -> None:
        self._rebuild()  # nothing to load or check: the ids come from the store

    def _rebuild(self) -> None:
        self.last_seq = self.store.max_seq(self.namespace)
        self.live = set(self.store.active_rids(self.namespace).tolist())
        self.dead = set()

    def _add(self, rids) -> None:
        self.live.update(int(r) for r in rids)

    def _remove(self, rids) -> None:
        self.live.difference_update(rids)

    @property
    def kind(self) -> str:
        """"flat" (exact) or "hnsw", as the FAISS index says."""
        return "hnsw" if len(self.live) >= self.hnsw_threshold else "flat"

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` nearest active edits to a normalised query vector: (row id, inner product)."""
        if k <= 0 or not self.live:
            return []
        from pgvector import Vector

        vector = Vector(np.asarray(query, dtype=np.float32).reshape(-1))
        hits: list = []
        if len(self.live) >= self.hnsw_threshold:
            if not self._hnsw_ready:
                self.store.ensure_hnsw(self.dim)
                self._hnsw_ready = True
            with self.store.snapshot():
                self.store._exec("SET LOCAL enable_seqscan = off")  # the walk, even where statistics lag behind
                hits = self.store._all(self._hnsw_sql, (vector, self.embedder, self.namespace, k))
        if len(hits) < min(k, len(self.live)):
            hits = self.store._all(self._exact_sql, (vector, self.namespace, self.embedder, k))
        return [(int(rid), float(score)) for rid, score in hits]

    def save(self) -> None:
        """Nothing to save: PostgreSQL holds the vectors and their index."""
        self.unsaved = 0
