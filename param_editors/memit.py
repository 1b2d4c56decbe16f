"""MEMIT: a batch of edits spread over a run of MLP down projections.

Each edit's value is a vector δᵢ added to the residual stream at the output of the last
edited block (subject's last token); the target there is zᵢ = hᵢ + δᵢ, for each of the
edit's forms (cloze contexts, chat question), each form its own key. Going up the
layers, each layer takes an equal share of what is still missing, (z − h)/(layers left),
and solves for the update that maps the batch's keys K to it while keeping the
corpus keys' outputs: ΔW = R Kᵀ (λC + K Kᵀ)⁻¹, with λ = ``mom2_weight`` (see ``settings``). Keys and the
residual are re-read after every layer, on the weights the lower layers left.
"""

from __future__ import annotations

from typing import Sequence

import torch

from memedit.layout import find_blocks, mlp_down
from memedit.models import LanguageModel

from .settings import MOM2_PER_DIM, EditorSettings
from .tracing import Request, at_subject
from .values import optimize_values


def spread(keys: torch.Tensor, missing: torch.Tensor, covariance: torch.Tensor, weight: float) -> torch.Tensor:
    """ΔW (out × in) mapping ``keys`` (n × in) to ``missing`` (n × out) under the covariance penalty."""
    k = keys.double().T
    a = weight * covariance.double() + k @ k.T
    return (missing.double().T @ torch.linalg.solve(a, k).T).float()


def apply_memit(lm: LanguageModel, requests: Sequence[Request], settings: EditorSettings,
                covariance: dict[int, torch.Tensor], progress: bool = False) -> list[float]:
    """Write ``requests`` into the model in place as one batch; returns each value's final loss."""
    blocks = find_blocks(lm.model)
    top = blocks[settings.layers[-1]]
    values = optimize_values(lm, requests, top, settings.value, progress=progress, label="MEMIT values")
    chat = settings.value.chat_form
    # Every form of an edit (each context, the chat question) is a key of its own, mapped
    # to that form's residual plus the edit's vector: an averaged key would reach the
    # cloze forms it is close to and miss the chat question, whose key lies apart.
    targets = at_subject(lm, requests, top, "output", chat=chat, mean=False) + torch.stack([v.delta for v in values])[:, None]
    for i, layer in enumerate(settings.layers):
        down = mlp_down(blocks[layer])
        keys = at_subject(lm, requests, down, "input", chat=chat, mean=False).flatten(0, 1)
        missing = (targets - at_subject(lm, requests, top, "output", chat=chat, mean=False)).flatten(0, 1)
        missing = missing / (len(settings.layers) - i)
        with torch.no_grad():
            weight = settings.mom2_weight or MOM2_PER_DIM * down.in_features
            down.weight += spread(keys, missing, covariance[layer].to(lm.device), weight).to(down.weight.dtype)
    return [v.loss for v in values]
