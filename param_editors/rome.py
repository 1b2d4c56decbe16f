"""ROME: one edit, one rank-one update of one MLP down projection.

The key k is the down projection's input at the subject's last token (averaged over the
context prefixes); the value is the vector δ that, added to the MLP's output there, makes
the model write the target. With C the keys' covariance, the update
ΔW = δ (C⁻¹k)ᵀ / (kᵀC⁻¹k) maps k to W k + δ and moves other keys as little as C allows.
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


def rank_one(key: torch.Tensor, delta: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """ΔW (out × in) that adds ``delta`` to the output for ``key`` (see the module docstring)."""
    c = covariance.double()
    c = c + RIDGE * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    u = torch.linalg.solve(c, key.double())
    return (torch.outer(delta.double(), u) / torch.dot(u, key.double())).float()


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
        key = at_subject(lm, [request], down, "input", chat=settings.value.chat_form)[0]
        value = optimize_value(lm, request, block.mlp, settings.value)
        with torch.no_grad():
            down.weight += rank_one(key, value.delta, cov).to(down.weight.dtype)
        losses.append(value.loss)
    return losses
