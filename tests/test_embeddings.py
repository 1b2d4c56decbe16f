"""The embedder: its direct path gives sentence-transformers' vectors, and odd pipelines fall back."""

from __future__ import annotations

import numpy as np

from memedit.embeddings import Embedder, get_embedder

TEXTS = ["Who employs Marisol Quenby?", "", "  padded with spaces  ", "¿Dónde trabaja Marisol Quenby?",
         "The capital of France is Paris. " * 80,  # past the 256-token limit: truncated the same way
         "x", "Where was Tamsin Heatherby born?\n"]


def reference(embedder: Embedder, texts: list[str]) -> np.ndarray:
    return embedder._model.encode(texts, batch_size=3, normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=False)


def test_the_direct_path_gives_sentence_transformers_vectors():
    embedder = get_embedder()
    assert embedder._direct is not None  # all-MiniLM-L6-v2 is a plain pipeline
    got = embedder.encode(TEXTS, batch_size=3)
    assert got.shape == (len(TEXTS), embedder.dim) and got.dtype == np.float32
    assert np.abs(got - reference(embedder, TEXTS)).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.abs(embedder.encode_one(TEXTS[0]) - got[0]).max() < 1e-5  # alone or in a batch


def test_a_pipeline_of_another_kind_goes_through_encode():
    real = get_embedder()._model

    class Wrapped:
        """A model whose modules are not transformer + mean pooling + normalise."""

        def __iter__(self):
            return iter([real[0], real[1]])  # no Normalize module

        def get_sentence_embedding_dimension(self):
            return 384

        def encode(self, texts, **kwargs):
            self.called = True
            return real.encode(texts, **kwargs)

    wrapped = Wrapped()
    embedder = Embedder("wrapped", wrapped)
    assert embedder._direct is None
    vectors = embedder.encode(TEXTS[:2])
    assert wrapped.called and vectors.shape == (2, 384)
