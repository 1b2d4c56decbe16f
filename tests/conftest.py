"""Shared fixtures: the real packaged embedder (loaded once), memories in tmp_path, and a
cheap deterministic embedder for the subprocesses of the concurrency tests."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest

from memedit import Memory
from memedit.embeddings import get_embedder


# Short, varied edit statements shared by the search and index tests.
STATEMENTS = [
    "The capital of France is Lyon.",
    "The coffee machine is on the third floor.",
    "Lionel Messi plays football for Juventus.",
    "The Eiffel Tower is made of wood.",
    "Water boils at 90 degrees Celsius in the lab.",
    "Alice's manager is Bob.",
    "The office closes at 6 pm on Fridays.",
    "Python 4 was released in 2031.",
    "The company mascot is a purple giraffe.",
    "Mount Everest is 9000 metres high.",
    "The wifi password is changed every Monday.",
    "Jupiter has 12 moons.",
]


class CachingEmbedder:
    """The real embedder with a per-text cache, so that the suite never embeds a text twice.

    Same ``name`` and ``dim`` as the wrapped model (indexes and cached vectors are those of
    the real MiniLM); the vectors are the model's own, only computed once per text.
    """

    def __init__(self, real) -> None:
        self.real, self.name, self.dim = real, real.name, real.dim
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, vector in zip(missing, self.real.encode(missing, batch_size=batch_size)):
                self._cache[text] = vector
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts]).astype(np.float32)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


@pytest.fixture(scope="session")
def embedder():
    """The packaged all-MiniLM-L6-v2 (get_embedder()), loaded once for the whole session."""
    return CachingEmbedder(get_embedder())


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "memory.db")


POSTGRES_ENV = "MEMEDIT_TEST_POSTGRES"


@lru_cache(maxsize=1)
def postgres_server() -> tuple[str | None, str]:
    """(the URL of the test PostgreSQL server, or None; why not). ``.ci/run`` starts one with
    scripts/postgres.sh and exports its URL as $MEMEDIT_TEST_POSTGRES."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        return None, f"no PostgreSQL test server: ${POSTGRES_ENV} is unset; start one with: export {POSTGRES_ENV}=$(bash scripts/postgres.sh start)"
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
    except Exception as err:  # any failure to reach it: the postgres cases are skipped, saying why
        return None, f"the PostgreSQL test server ${POSTGRES_ENV}={url} cannot be reached ({type(err).__name__}: {err})"
    return url, ""


def with_database(url: str, name: str) -> str:
    """The same server URL naming another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@pytest.fixture
def fresh_postgres(monkeypatch, tmp_path):
    """Make new, empty PostgreSQL databases on the test server (dropped after the test):
    ``fresh_postgres()`` gives the URL of one. Skips when no server is reachable.
    Artifact files of these memories go under tmp_path ($MEMEDIT_ARTIFACTS)."""
    import psycopg

    url, reason = postgres_server()
    if url is None:
        pytest.skip(reason)
    monkeypatch.setenv("MEMEDIT_ARTIFACTS", str(tmp_path / "artifacts"))
    made: list[str] = []

    def make() -> str:
        name = f"memedit_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return with_database(url, name)

    yield make
    with psycopg.connect(url, autocommit=True) as admin:
        for name in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request, tmp_path):
    """One fresh database on each backend: an SQLite file in tmp_path, or a new PostgreSQL
    database on the test server (the postgres case is skipped, with the reason, without one)."""
    if request.param == "sqlite":
        return str(tmp_path / "memory.db")
    return request.getfixturevalue("fresh_postgres")()


@pytest.fixture
def open_memory(embedder):
    """Open Memory objects with the session embedder; every one is closed after the test."""
    opened: list[Memory] = []

    def open_(path, **kwargs):
        kwargs.setdefault("embedder", embedder)
        memory = Memory(path, **kwargs)
        opened.append(memory)
        return memory

    yield open_
    for memory in reversed(opened):
        memory.close()


@pytest.fixture
def memory(open_memory, db_path):
    return open_memory(db_path)


class BruteForce:
    """Nearest edits by cosine computed with numpy alone, from the embedder's own vectors."""

    def __init__(self, embedder, edits) -> None:
        self.embedder, self.edits = embedder, list(edits)
        matrix = np.asarray(embedder.encode([e.statement for e in self.edits]), dtype=np.float64).reshape(len(self.edits), -1)
        self.matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True) if len(self.edits) else matrix
        self._queries: dict[str, np.ndarray] = {}

    def top(self, query: str, k: int) -> list[tuple[str, float]]:
        """(id, cosine) of the ``k`` edits nearest to ``query``, best first."""
        if not self.edits:
            return []
        if query not in self._queries:
            q = np.asarray(self.embedder.encode([query])[0], dtype=np.float64)
            self._queries[query] = q / np.linalg.norm(q)
        scores = self.matrix @ self._queries[query]
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self.edits[i].id, float(scores[i])) for i in order]


def assert_same_ranking(got, expected, tol):
    """``got`` (a list of Hits) has the ids of ``expected`` in order, scores within ``tol``."""
    assert [h.edit.id for h in got] == [i for i, _ in expected]
    for hit, (_, score) in zip(got, expected):
        assert abs(hit.score - score) <= tol, (hit.edit.id, hit.score, score)


class HashEmbedder:
    """A deterministic bag-of-words embedder (no model to load), duck-typed like memedit's.

    Each lower-cased word maps to a fixed pseudo-random vector seeded by its SHA-256; a
    text is the normalised sum of its words. Identical texts get identical vectors, texts
    with disjoint words are nearly orthogonal. Its ``name`` is its own, so an index built
    with it is never mistaken for a MiniLM index.
    """

    name = "test-hash-bow-64"

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim)

    def encode(self, texts, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            vector = np.zeros(self.dim)
            for word in re.findall(r"\w+", text.lower()):
                vector += self._word(word)
            norm = np.linalg.norm(vector)
            out[row] = vector / norm if norm else np.eye(self.dim)[0]
        return out

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


@pytest.fixture(scope="session")
def lm():
    """SmolLM2-135M-Instruct from its package (converted once into the cache), loaded once."""
    from memedit.models import load_model

    return load_model("smollm2-135m")
