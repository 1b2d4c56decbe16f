"""Where things are inside a Hugging Face causal LM: decoder blocks, the final norm, MLP projections,
and the output head (with its logit softcapping).

Shared by the white-box editors (GRACE in ``retrievers``, ROME and MEMIT in
``param_editors``). Llama, Qwen2, Gemma3 (and GPT-2-style) layouts are known.
"""

from __future__ import annotations

from contextlib import contextmanager

from typing import Any, Iterator, Sequence

import torch

BLOCK_PATHS = ("model.layers", "model.language_model.layers", "language_model.model.layers", "transformer.h", "model.decoder.layers")
NORM_PATHS = ("model.norm", "model.language_model.norm", "language_model.model.norm", "transformer.ln_f", "model.decoder.final_layer_norm")


def attribute(model: torch.nn.Module, path: str) -> Any:
    """``model.a.b.c`` for ``path="a.b.c"``, or None where a part is missing."""
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_blocks(model: torch.nn.Module) -> Sequence[torch.nn.Module]:
    """The decoder blocks of a Hugging Face causal LM, each with an ``mlp``."""
    for path in BLOCK_PATHS:
        obj = attribute(model, path)
        if obj is not None and len(obj) and hasattr(obj[0], "mlp"):
            return obj
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}: white-box editing needs blocks "
                     f"with an .mlp (Llama, Qwen2, Gemma3 layouts); pass a local Hugging Face causal LM")


def can_start_at(model: torch.nn.Module, start: int) -> bool:
    """Whether the model's body can run its blocks from ``start`` on only (see
    :func:`blocks_from`): not where its blocks differ in attention type, since its body
    picks each block's mask by the block's place in the list."""
    kinds = set(getattr(getattr(model, "config", None), "layer_types", None) or ())
    return start > 0 and len(kinds) <= 1 and any(attribute(model, p) is not None for p in BLOCK_PATHS)


@contextmanager
def blocks_from(model: torch.nn.Module, start: int) -> Iterator[bool]:
    """While the block runs, the model's body runs only its blocks from ``start`` on; the
    caller feeds the hidden state entering block ``start`` as ``inputs_embeds`` (each
    block keeps its own index into a key/value cache). Yields False, and changes nothing,
    where :func:`can_start_at` says no."""
    if not can_start_at(model, start):
        yield False
        return
    path = next(p for p in BLOCK_PATHS if attribute(model, p) is not None)
    owner_path, _, name = path.rpartition(".")
    owner = attribute(model, owner_path) if owner_path else model
    blocks = getattr(owner, name)
    setattr(owner, name, torch.nn.ModuleList(list(blocks)[start:]))
    try:
        yield True
    finally:
        setattr(owner, name, blocks)


def final_norm(model: torch.nn.Module) -> torch.nn.Module | None:
    """The norm applied after the last block (``model.model.norm`` in the usual layouts), or None."""
    for path in NORM_PATHS:
        obj = attribute(model, path)
        if isinstance(obj, torch.nn.Module):
            return obj
    return None


def mlp_down(block: torch.nn.Module) -> torch.nn.Linear:
    """The MLP's output projection of one block (``mlp.down_proj``): the matrix ROME and MEMIT edit."""
    down = getattr(block.mlp, "down_proj", None)
    if not isinstance(down, torch.nn.Linear):
        raise ValueError(f"{type(block).__name__}.mlp has no down_proj linear layer; ROME and MEMIT support the "
                         f"Llama, Qwen2 and Gemma3 MLP layout (gate_proj, up_proj, down_proj)")
    return down


def output_logits(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The output head on final (normed) hidden states, softcapped where the model's config
    asks for it (Gemma's ``final_logit_softcapping``)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits
