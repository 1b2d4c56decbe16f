"""MEMIT: a batch of edits spread over a run of MLP down projections.

Each edit's value is a vector δᵢ added to the residual stream at the output of the last
edited block (subject's last token); the target there is zᵢ = hᵢ + δᵢ, for each of the
edit's forms (cloze contexts, chat question), each form its own key. Going up the
layers, each layer takes an equal share of what is still missing, (z − h)/(layers left),
and solves for the update that maps the batch's keys K to it while keeping the
corpus keys' outputs: ΔW = R Kᵀ (λC + K Kᵀ)⁻¹, with λ = ``mom2_weight`` (see ``settings``). Keys and the
residual are re-read after every layer, on the weights the lower layers left.

In a large batch the edits' updates reach each other's keys (and the other tokens of
their texts), so some edits miss their target after the spread though their vectors
reached it alone; ``retries`` rounds retrain just those on the edited weights (see
:func:`apply_memit`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from memedit.layout import find_blocks, mlp_down
from memedit.models import LanguageModel

from .settings import MOM2_PER_DIM, EditorSettings
from .tracing import Request, at_subject, reliability
from .values import optimize_values


def spread(keys: torch.Tensor, missing: torch.Tensor, covariance: torch.Tensor, weight: float) -> torch.Tensor:
    """ΔW (out × in) mapping ``keys`` (n × in) to ``missing`` (n × out) under the covariance penalty."""
    k = keys.double().T
    a = weight * covariance.double() + k @ k.T
    return (missing.double().T @ torch.linalg.solve(a, k).T).float()


def apply_memit(lm: LanguageModel, requests: Sequence[Request], settings: EditorSettings,
                covariance: dict[int, torch.Tensor], progress: bool = False) -> list[float]:
    """Write ``requests`` into the model in place as one batch; returns each value's final loss.

    After the batch, each of ``settings.retries`` rounds takes the edits whose cloze prompt
    or chat question does not give the target yet, trains their values again on the
    weights the batch left (where the other edits' updates now touch them too), and
    spreads them as a batch again, with every other edit held where it is (its vector
    zero)."""
    top = find_blocks(lm.model)[settings.layers[-1]]
    values = optimize_values(lm, requests, top, settings.value, progress=progress, label="MEMIT values")
    losses = [v.loss for v in values]
    deltas = torch.stack([v.delta for v in values])
    _spread_batch(lm, requests, deltas, settings, covariance)
    for round_ in range(settings.retries):
        missed = [i for i, r in enumerate(requests) if not _takes(lm, r, settings.value.chat_form)]
        if not missed:
            break
        again = optimize_values(lm, [requests[i] for i in missed], top, settings.value, progress=progress,
                                label=f"MEMIT values, retry {round_ + 1} ({len(missed)} edits)")
        deltas = torch.zeros_like(deltas)
        for i, value in zip(missed, again):
            deltas[i], losses[i] = value.delta, value.loss
        _spread_batch(lm, requests, deltas, settings, covariance)
    return losses


def _takes(lm: LanguageModel, request: Request, chat: bool) -> bool:
    """Whether the request's target is the greedy answer of its cloze prompt (and chat question)."""
    cloze, chat_score = reliability(lm, request)
    return cloze == 1.0 and (chat_score == 1.0 or not chat)


def _spread_batch(lm: LanguageModel, requests: Sequence[Request], deltas: torch.Tensor, settings: EditorSettings,
                  covariance: dict[int, torch.Tensor]) -> None:
    """Add ``deltas[i]`` (one per request) at the top layer's output over every form of request i,
    spread over ``settings.layers`` (see the module docstring)."""
    blocks = find_blocks(lm.model)
    top = blocks[settings.layers[-1]]
    chat = settings.value.chat_form
    # Every form of an edit (each context, the chat question) is a key of its own, mapped
    # to that form's residual plus the edit's vector: an averaged key would reach the
    # cloze forms it is close to and miss the chat question, whose key lies apart.
    targets = at_subject(lm, requests, top, "output", chat=chat, mean=False) + deltas[:, None]
    for i, layer in enumerate(settings.layers):
        down = mlp_down(blocks[layer])
        keys = at_subject(lm, requests, down, "input", chat=chat, mean=False).flatten(0, 1)
        missing = (targets - at_subject(lm, requests, top, "output", chat=chat, mean=False)).flatten(0, 1)
        missing = missing / (len(settings.layers) - i)
        with torch.no_grad():
            weight = settings.mom2_weight or MOM2_PER_DIM * down.in_features
            down.weight += spread(keys, missing, covariance[layer].to(lm.device), weight).to(down.weight.dtype)
