"""ROME: one edit, one rank-one update of one MLP down projection.

The keys are the down projection's input at the subject's last token, one per form of the
edit (each context prefix, the chat question); the value is the vector δ that, added to
the MLP's output there, makes the model write the target. With C the keys' covariance
and K the keys, the update ΔW = δ uᵀ with u = C⁻¹K (KᵀC⁻¹K)⁻¹ 1 maps every key k to
W k + δ and moves other keys as little as C allows (with one key this is published
ROME's δ (C⁻¹k)ᵀ / (kᵀC⁻¹k); an averaged key would reach the forms near the average and
miss the chat question, whose key lies apart).
Several edits are written one after another, each on the weights the last one left.
"""

from __future__ import annotations

from typing import Sequence

import torch

from memedit.layout import find_blocks, mlp_down
from memedit.models import LanguageModel

from .settings import EditorSettings
from .tracing import Request, at_subject
from .values import optimize_value

RIDGE = 1e-4  # relative to the covariance's mean diagonal: keeps the solve stable


def rank_one(keys: torch.Tensor, delta: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """ΔW (out × in) that adds ``delta`` to the output for each of ``keys`` (forms × in, or
    one key), see the module docstring."""
    c = covariance.double()
    c = c + RIDGE * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    k = keys.double().reshape(-1, c.shape[0]).T           # in × forms
    ck = torch.linalg.solve(c, k)                           # C⁻¹K
    u = ck @ torch.linalg.solve(k.T @ ck, torch.ones(k.shape[1], dtype=c.dtype, device=c.device))
    return torch.outer(delta.double(), u).float()


def apply_rome(lm: LanguageModel, requests: Sequence[Request], settings: EditorSettings,
               covariance: dict[int, torch.Tensor], progress: bool = False) -> list[float]:
    """Write ``requests`` into the model in place, one after another; returns each value's final loss."""
    from tqdm.auto import tqdm

    layer = settings.layers[0]
    block = find_blocks(lm.model)[layer]
    down = mlp_down(block)
    cov = covariance[layer].to(lm.device)
    losses = []
    for request in tqdm(requests, desc="ROME", unit="edit", disable=not progress):
        keys = at_subject(lm, [request], down, "input", chat=settings.value.chat_form, mean=False)[0]
        value = optimize_value(lm, request, block.mlp, settings.value)
        with torch.no_grad():
            down.weight += rank_one(keys, value.delta, cov).to(down.weight.dtype)
        losses.append(value.loss)
    return losses
