"""The embedder: its direct path gives sentence-transformers' vectors, and odd pipelines fall back."""

from __future__ import annotations

import numpy as np
import pytest

from memedit.embeddings import BertForward, Embedder, get_embedder, matmul_dtype

TEXTS = ["Who employs Marisol Quenby?", "", "  padded with spaces  ", "¿Dónde trabaja Marisol Quenby?",
         "The capital of France is Paris. " * 80,  # past the 256-token limit: truncated the same way
         "x", "Where was Tamsin Heatherby born?\n"]


def reference(embedder: Embedder, texts: list[str]) -> np.ndarray:
    return embedder._model.encode(texts, batch_size=3, normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=False)


def test_the_direct_path_gives_sentence_transformers_vectors():
    embedder = Embedder("exact", get_embedder()._model, precision="float32")
    assert embedder.precision == "float32" and embedder._direct is not None  # all-MiniLM-L6-v2 is a plain pipeline
    assert isinstance(embedder._direct[1], BertForward)  # and its encoder runs through the lean forward
    got = embedder.encode(TEXTS, batch_size=3)
    assert got.shape == (len(TEXTS), embedder.dim) and got.dtype == np.float32
    assert np.abs(got - reference(embedder, TEXTS)).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.abs(embedder.encode_one(TEXTS[0]) - got[0]).max() < 1e-5  # alone or in a batch


def test_bfloat16_products_stay_within_a_hair_of_the_float32_vectors():
    import torch

    exact = Embedder("exact", get_embedder()._model, precision="float32")
    fast = Embedder("fast", get_embedder()._model, precision="bfloat16")
    assert fast.precision == "bfloat16" and fast._direct[1].layers[0][0].dtype == torch.bfloat16
    want, got = exact.encode(TEXTS, batch_size=3), fast.encode(TEXTS, batch_size=3)
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert 0 < np.abs(got - want).max() < 2e-2  # not the same arithmetic, and close to it
    assert (got * want).sum(1).min() > 0.9999  # cosine to the float32 vector of the same text
    scores_exact, scores_fast = want @ want.T, got @ want.T
    assert np.abs(scores_fast - scores_exact).max() < 5e-3  # a question's score against stored vectors
    assert (fast.encode_one(TEXTS[0]) * got[0]).sum() > 0.99999  # alone or in a batch


def test_packed_bfloat16_weights_give_the_plain_products_numbers(monkeypatch):
    import torch

    module, tokenizer = get_embedder()._model[0].auto_model, get_embedder()._model[0].tokenizer
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    fast = BertForward(module, torch.bfloat16)
    monkeypatch.setattr(BertForward, "_pack", lambda self: False)
    plain = BertForward(module, torch.bfloat16)
    assert plain.packed is False and isinstance(fast.packed, bool)  # packed where oneDNN can (it can on x86)
    with torch.inference_mode():
        assert torch.equal(fast(**batch), plain(**batch))


def test_the_precision_setting_is_checked(monkeypatch):
    import torch

    monkeypatch.setenv("MEMEDIT_EMBED_PRECISION", "float32")
    assert matmul_dtype() is torch.float32 and matmul_dtype("bfloat16") is torch.bfloat16
    monkeypatch.setenv("MEMEDIT_EMBED_PRECISION", "half")
    with pytest.raises(ValueError, match="MEMEDIT_EMBED_PRECISION='half': use one of auto, float32, bfloat16"):
        matmul_dtype()


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


def test_the_lean_forward_matches_the_module_and_refuses_what_it_does_not_know():
    import torch

    module = get_embedder()._model[0].auto_model
    tokenizer = get_embedder()._model[0].tokenizer
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        want = module(**batch).last_hidden_state
        got = BertForward(module)(**batch)
    keep = batch["attention_mask"].bool()  # padded positions are masked out by pooling
    assert torch.abs(got[keep] - want[keep]).max() < 1e-4
    assert BertForward.of(object()) is None
    module.config.hidden_act = "relu"
    try:
        assert BertForward.of(module) is None  # another activation: the module runs as it is
    finally:
        module.config.hidden_act = "gelu"
    with torch.inference_mode():
        try:
            BertForward(module)(batch["input_ids"], batch["attention_mask"], torch.ones_like(batch["input_ids"]))
        except ValueError as err:
            assert "token type" in str(err)
        else:
            raise AssertionError("a second token type must be refused")


def test_sequences_packed_into_one_pass_pool_as_a_padded_batch_and_adapters_touch_only_their_own():
    import torch

    module = get_embedder()._model[0].auto_model
    tokenizer = get_embedder()._model[0].tokenizer
    forward = BertForward(module)  # float32: the two ways agree to rounding
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert len({len(i) for i in ids}) > 1  # lengths differ: packing is not padding
    with torch.inference_mode():
        hidden = forward(**batch)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        want = (hidden * mask).sum(1) / mask.sum(1)
        got = forward.pooled(ids)
        assert got.shape == want.shape and torch.abs(got - want).max() < 1e-4
        generator = torch.Generator().manual_seed(0)
        adapters = [tuple((torch.randn(8, n_in, generator=generator) * 0.1, torch.randn(n_out, 8, generator=generator) * 0.1)
                          for n_in, n_out in ((384, 1152), (384, 384), (384, 1536), (1536, 384))) for _ in module.encoder.layer]
        adapted = forward.pooled(ids, adapters, adapted_from=1)
    assert torch.abs(adapted[0] - got[0]).max() < 1e-5  # before adapted_from: as without adapters
    assert (torch.abs(adapted[1:] - got[1:]).amax(dim=1) > 1e-2).all()  # from it on: changed
