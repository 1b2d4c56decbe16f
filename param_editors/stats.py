"""Key covariance statistics: E[k kᵀ] of an MLP down projection's input, per layer.

ROME and MEMIT need them to spread an update where it disturbs other keys least. They are
computed once from the Wikipedia excerpt that ships in ``gensim``'s test data (article
text after gensim's ``filter_wiki``), over the first ``tokens`` tokens in windows of
``WINDOW``, and cached on disk under ``<cache>/stats/<model>/<corpus sha>-<tokens>/``,
one safetensors file per layer with its SHA-256 beside it. A later call loads them.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import re
import time
import xml.etree.ElementTree as ET
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from memedit.files import write_atomic
from memedit.hooks import read_input
from memedit.layout import find_blocks, mlp_down
from memedit.model_files import cache_dir
from memedit.models import LanguageModel

from .tracing import encode

CORPUS_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WINDOW = 128
BATCH = 8
MIN_ARTICLE_CHARS = 500


@dataclass
class CovarianceStats:
    """Per-layer E[k kᵀ] (float32, on CPU), and which layers came from the cache."""

    matrices: dict[int, torch.Tensor]
    tokens: int
    computed: list[int] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)
    seconds: float = 0.0
    folder: Path | None = None


def corpus_path() -> Path:
    """The gensim test-data Wikipedia excerpt (gensim need not be imported to find it)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the covariance corpus ships in gensim's test data; install it: pip install gensim")
    path = Path(spec.origin).parent / CORPUS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the gensim install; reinstall gensim (pip install --force-reinstall gensim)")
    return path


@lru_cache(maxsize=1)
def corpus_sha256() -> str:
    return hashlib.sha256(corpus_path().read_bytes()).hexdigest()


@lru_cache(maxsize=1)
def corpus_articles() -> tuple[str, ...]:
    """Clean article texts of the excerpt, in file order (redirects and stubs dropped)."""
    from gensim.corpora.wikicorpus import filter_wiki

    articles = []
    with bz2.open(corpus_path()) as handle:
        for _, element in ET.iterparse(handle):
            if not element.tag.endswith("}text") or not element.text:
                continue
            if not element.text.lstrip().lower().startswith("#redirect"):
                text = re.sub(r"[ \t]+", " ", filter_wiki(element.text))
                text = re.sub(r"\n\s*\n+", "\n\n", text).strip()
                if len(text) >= MIN_ARTICLE_CHARS:
                    articles.append(text)
            element.clear()
    return tuple(articles)


def corpus_windows(lm: LanguageModel, tokens: int) -> list[list[int]]:
    """The first ``tokens`` tokens of the corpus (articles joined by the EOS token) in windows."""
    ids: list[int] = []
    eos = lm.tokenizer.eos_token_id
    for article in corpus_articles():
        ids.extend(encode(lm, article))
        ids.append(eos)
        if len(ids) >= tokens:
            break
    ids = ids[:tokens]
    if len(ids) < tokens:
        raise ValueError(f"the corpus has only {len(ids):,} tokens for this tokenizer; ask for at most that many")
    return [ids[i:i + WINDOW] for i in range(0, len(ids), WINDOW)]


def model_key(lm: LanguageModel) -> str:
    """A folder name for the model: its name and a hash of its configuration."""
    config = hashlib.sha256(lm.model.config.to_json_string(use_diff=False).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(lm.name)).name or "model")[:60]
    return f"{name}-{config}"


def stats_folder(lm: LanguageModel, tokens: int, root: Path | None = None) -> Path:
    return (root or cache_dir() / "stats") / model_key(lm) / f"{corpus_sha256()[:16]}-{tokens}"


def key_covariance(lm: LanguageModel, layers: Sequence[int], tokens: int, root: Path | None = None,
                   progress: bool = True) -> CovarianceStats:
    """E[k kᵀ] of ``mlp.down_proj``'s input at each of ``layers``, from the cache where it is."""
    folder = stats_folder(lm, tokens, root)
    started = time.perf_counter()
    result = CovarianceStats({}, tokens, folder=folder)
    for layer in layers:
        matrix = _load(folder, layer)
        if matrix is not None:
            result.matrices[layer] = matrix
            result.cached.append(layer)
    missing = [layer for layer in layers if layer not in result.matrices]
    if missing:
        computed = _compute(lm, missing, tokens, progress)
        folder.mkdir(parents=True, exist_ok=True)
        for layer, matrix in computed.items():
            _save(folder, layer, matrix, lm, tokens)
            result.matrices[layer] = matrix
        result.computed = missing
    result.seconds = time.perf_counter() - started
    return result


def _compute(lm: LanguageModel, layers: Sequence[int], tokens: int, progress: bool) -> dict[int, torch.Tensor]:
    from tqdm.auto import tqdm

    from .tracing import pad, run_until

    blocks = find_blocks(lm.model)
    downs = {layer: mlp_down(blocks[layer]) for layer in layers}
    sums = {layer: torch.zeros(d.in_features, d.in_features, dtype=torch.float64, device=lm.device) for layer, d in downs.items()}
    count = 0
    windows = corpus_windows(lm, tokens)
    bar = tqdm(total=tokens, desc=f"key statistics ({len(layers)} layer{'s' * (len(layers) > 1)})", unit="tok",
               disable=not progress)
    try:
        with torch.no_grad():
            for start in range(0, len(windows), BATCH):
                chunk = windows[start:start + BATCH]
                ids, mask = pad(lm, chunk)
                with ExitStack() as stack:
                    readers = {layer: stack.enter_context(read_input(d)) for layer, d in downs.items()}
                    run_until(lm, ids, mask, downs[max(layers)])
                keep = mask.bool().view(-1)
                for layer, seen in readers.items():
                    keys = seen[0].reshape(-1, seen[0].shape[-1])[keep].float()
                    sums[layer] += (keys.T @ keys).double()  # float32 product per batch, float64 running sum
                count += int(keep.sum())
                bar.update(int(keep.sum()))
    finally:
        bar.close()
    return {layer: (total / count).float().cpu() for layer, total in sums.items()}


def _paths(folder: Path, layer: int) -> tuple[Path, Path]:
    return folder / f"layer{layer}.safetensors", folder / f"layer{layer}.json"


def _load(folder: Path, layer: int) -> torch.Tensor | None:
    from safetensors.torch import load

    data_path, info_path = _paths(folder, layer)
    if not (data_path.exists() and info_path.exists()):
        return None
    data = data_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != json.loads(info_path.read_text())["sha256"]:
        return None  # corrupted or half-written: recompute
    return load(data)["mom2"]


def _save(folder: Path, layer: int, matrix: torch.Tensor, lm: LanguageModel, tokens: int) -> None:
    from safetensors.torch import save


    data = save({"mom2": matrix.contiguous()})
    data_path, info_path = _paths(folder, layer)
    write_atomic(data_path, data)
    info = {"sha256": hashlib.sha256(data).hexdigest(), "model": str(lm.name), "layer": layer, "tokens": tokens,
            "corpus": CORPUS_FILE, "corpus_sha256": corpus_sha256()}
    write_atomic(info_path, json.dumps(info, indent=1).encode())
