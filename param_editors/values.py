"""The value an edit needs: a vector added at one module's output, at the subject's last
token, optimised so the model writes the target (shared by ROME and MEMIT).

The loss is the target's negative log-likelihood after each of the edit's forms (the cloze
prompt under each context prefix, and the chat question), plus a KL
term that keeps the model's reading of ``"<subject> is a"`` where it was, plus a weight
decay on the vector's size; the vector's norm is clamped to a multiple of the original
hidden state's. The model's weights are frozen: only the vectors are trained. Several
edits are trained together in one batch (each edit's rows see only its own vector, so
the result is mathematically the same as one at a time, only faster); an edit whose loss is under
``stop_loss`` leaves the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from memedit.hooks import read_output
from memedit.layout import output_logits
from memedit.models import LanguageModel

from .tracing import Request, add_to_output, encode, essence_tokens, forms, pad

EDITS_PER_BATCH = 8


@dataclass(frozen=True)
class ValueSettings:
    """``steps`` and ``lr`` of the Adam loop (an edit stops once its target's loss is under
    ``stop_loss``); ``chat_form``: whether the chat question is one of the edit's forms (see
    ``tracing.forms``); ``kl_factor``, ``weight_decay`` and ``clamp_norm`` as in the module docstring."""

    steps: int = 25
    lr: float = 0.5
    chat_form: bool = True  # train (and key) on the chat question too, not only the cloze prompt
    stop_loss: float = 0.05
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm: float = 4.0


@dataclass(frozen=True)
class Value:
    """The trained vector of one request, with the loss it reached and the steps it took."""

    delta: torch.Tensor
    loss: float
    steps: int


@dataclass
class _Rows:
    """The token rows of a group of requests: per request, one row per context, then the essence row."""

    ids: torch.Tensor
    mask: torch.Tensor
    owner: list[int]          # request index of each row
    where: list[int]          # subject's last token of each row
    targets: list[tuple[int, torch.Tensor] | None]  # (first predicting position, target ids), None for essence rows


def _rows(lm: LanguageModel, requests: Sequence[Request], chat: bool) -> _Rows:
    ids, owner, where, targets = [], [], [], []
    for i, request in enumerate(requests):
        for form in forms(lm, request, chat=chat):
            ids.append(form.ids + form.target[:-1])
            owner.append(i)
            where.append(form.last)
            targets.append((len(form.ids) - 1, torch.tensor(form.target, device=lm.device)))
        essence, last = essence_tokens(lm, request)
        ids.append(essence)
        owner.append(i)
        where.append(last)
        targets.append(None)
    padded, mask = pad(lm, ids)
    return _Rows(padded, mask, owner, where, targets)


def _scored(rows: _Rows, picked: list[int]) -> tuple[list[int], list[int]]:
    """(batch row, position) of every scored position: the target tokens' predictions of
    each context row, then the subject's last token of each essence row."""
    at_rows, at_pos, essence_rows, essence_pos = [], [], [], []
    for j, row in enumerate(picked):
        target = rows.targets[row]
        if target is None:
            essence_rows.append(j)
            essence_pos.append(rows.where[row])
        else:
            start, tokens = target
            at_rows += [j] * len(tokens)
            at_pos += range(start, start + len(tokens))
    return at_rows + essence_rows, at_pos + essence_pos


def logits_at(lm: LanguageModel, ids: torch.Tensor, mask: torch.Tensor, at_rows: list[int], at_pos: list[int]) -> torch.Tensor:
    """The model's logits at the given (row, position) pairs only: the output head runs on
    those positions, not on the whole batch (it costs a fifth of a small model)."""
    model = lm.model
    body = getattr(model, "base_model", model)
    head = model.get_output_embeddings()
    if body is model or head is None:
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[at_rows, at_pos]
    hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    return output_logits(model, hidden[at_rows, at_pos])


def _losses(logits: torch.Tensor, rows: _Rows, picked: list[int], reference: dict[int, torch.Tensor],
            n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per request (of ``n``): the mean target NLL over its context rows, and its essence KL.
    ``logits`` are those of ``_scored(rows, picked)``, in that order."""
    gold, scored, essence = [], [], []  # scored: (row, its number of target tokens)
    for row in picked:
        target = rows.targets[row]
        if target is None:
            essence.append(row)
        else:
            gold.append(target[1])
            scored.append((row, len(target[1])))
    count = sum(size for _, size in scored)
    logprobs = torch.log_softmax(logits[:count].float(), -1)
    token_nll = -logprobs.gather(1, torch.cat(gold).unsqueeze(1)).squeeze(1)
    per_row: dict[int, list[torch.Tensor]] = {}  # request -> mean NLL of each of its rows
    start = 0
    for row, size in scored:
        per_row.setdefault(rows.owner[row], []).append(token_nll[start:start + size].mean())
        start += size
    kl_of: dict[int, torch.Tensor] = {}
    for k, row in enumerate(essence):
        current = torch.log_softmax(logits[count + k].float(), -1)
        kl_of[rows.owner[row]] = torch.nn.functional.kl_div(current, reference[row], log_target=True, reduction="sum")
    zero = logits.new_zeros((), dtype=torch.float32)
    nll = torch.stack([torch.stack(per_row[i]).mean() if i in per_row else zero for i in range(n)])
    return nll, torch.stack([kl_of.get(i, zero) for i in range(n)])


def _optimize_group(lm: LanguageModel, requests: Sequence[Request], module: torch.nn.Module,
                    settings: ValueSettings) -> list[Value]:
    rows = _rows(lm, requests, settings.chat_form)
    n = len(requests)
    with torch.no_grad(), read_output(module) as seen:
        logits = lm.model(input_ids=rows.ids, attention_mask=rows.mask, use_cache=False).logits
    first_row = [rows.owner.index(i) for i in range(n)]
    original = torch.stack([seen[0][r, rows.where[r]].float() for r in first_row])
    reference = {r: torch.log_softmax(logits[r, rows.where[r]].float(), -1)
                 for r, t in enumerate(rows.targets) if t is None}
    deltas = torch.zeros_like(original, requires_grad=True)
    optimizer = torch.optim.Adam([deltas], lr=settings.lr)
    limit = settings.clamp_norm * original.norm(dim=1)
    losses = [float("inf")] * n
    steps = [0] * n
    done = torch.zeros(n, dtype=torch.bool)
    for step in range(1, settings.steps + 1):
        live = [r for r, owner in enumerate(rows.owner) if not done[owner]]
        owners = [rows.owner[r] for r in live]
        with add_to_output(module, range(len(live)), [rows.where[r] for r in live], deltas[owners]):
            logits = logits_at(lm, rows.ids[live], rows.mask[live], *_scored(rows, live))
        nll, kl = _losses(logits, rows, live, reference, n)
        decay = settings.weight_decay * (deltas.norm(dim=1) / original.norm(dim=1)) ** 2
        for i in set(owners):
            losses[i], steps[i] = float(nll[i].detach()), step
            if losses[i] < settings.stop_loss:
                done[i] = True
        if bool(done.all()):
            break
        frozen = deltas.detach()[done].clone()
        optimizer.zero_grad()
        loss = (nll + settings.kl_factor * kl + decay)[~done].sum()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            deltas[done] = frozen  # Adam's momentum must not move a finished edit
            norms = deltas.norm(dim=1)
            scale = torch.where(norms > limit, limit / norms.clamp_min(1e-12), torch.ones_like(norms))
            deltas.mul_(scale.unsqueeze(1))
    return [Value(deltas[i].detach().clone(), losses[i], steps[i]) for i in range(n)]


def optimize_values(lm: LanguageModel, requests: Sequence[Request], module: torch.nn.Module,
                    settings: ValueSettings, progress: bool = False, label: str = "values") -> list[Value]:
    """The trained vector of each request, ``EDITS_PER_BATCH`` at a time, with a progress bar when asked."""
    from tqdm.auto import tqdm

    params = [p for p in lm.model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    # Edits of similar length share a batch, so little of it is padding.
    order = sorted(range(len(requests)), key=lambda i: len(encode(lm, requests[i].text + requests[i].continuation)))
    out: dict[int, Value] = {}
    try:
        with tqdm(total=len(requests), desc=label, unit="edit", disable=not progress) as bar:
            for start in range(0, len(order), EDITS_PER_BATCH):
                group = order[start:start + EDITS_PER_BATCH]
                out.update(zip(group, _optimize_group(lm, [requests[i] for i in group], module, settings)))
                bar.update(len(group))
    finally:
        for p in params:
            p.requires_grad_(True)
    return [out[i] for i in range(len(requests))]


def optimize_value(lm: LanguageModel, request: Request, module: torch.nn.Module, settings: ValueSettings) -> Value:
    """The trained vector of one request."""
    return optimize_values(lm, [request], module, settings)[0]
