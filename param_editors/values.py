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

Where the hardware computes bfloat16 natively (a CPU with AMX or AVX-512 BF16, a CUDA
GPU that has it) and the model is float32, the loop first descends on a bfloat16 copy of
the weights (a draft: matrix products about three times faster on such a CPU), then
finishes in float32 from where the draft stopped: every edit's loss is measured again in
float32 and an edit leaves only once it is under ``stop_loss`` there, so the values meet
the same bar as a float32 loop. The float32 weights are kept aside and put back as they
were, bit for bit.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from memedit.hooks import read_input, read_output
from memedit.layout import blocks_from, can_start_at, find_blocks, output_logits
from memedit.models import LanguageModel

from .tracing import Request, add_to_output, encode, essence_tokens, forms, run_until, subject_tokens
from .tracing import other_facts as other_facts_of

EDITS_PER_BATCH = 8


@dataclass(frozen=True)
class ValueSettings:
    """``steps`` and ``lr`` of the Adam loop (an edit stops once its target's loss is under
    ``stop_loss``); ``chat_form``: whether the chat question is one of the edit's forms (see
    ``tracing.forms``); ``kl_factor``, ``weight_decay`` and ``clamp_norm`` as in the module docstring;
    ``bfloat16_draft``: descend on bfloat16 weights first where that is faster (module docstring)."""

    steps: int = 60
    lr: float = 0.5
    chat_form: bool = True  # train (and key) on the chat question too, not only the cloze prompt
    stop_loss: float = 0.05
    kl_factor: float = 0.0625
    other_facts: bool = True  # keep other facts' predictions (``tracing.OTHER_FACTS``) in the KL term
    weight_decay: float = 0.1
    clamp_norm: float = 4.0
    bfloat16_draft: bool = True


@dataclass(frozen=True)
class Value:
    """The trained vector of one request, with the loss it reached and the steps it took."""

    delta: torch.Tensor
    loss: float
    steps: int


@dataclass
class _Rows:
    """The token rows of a group of requests: per request, one row per form, then the essence row."""

    tokens: list[list[int]]   # each row's ids, unpadded
    owner: list[int]          # request index of each row
    where: list[int]          # subject's last token of each row
    targets: list[tuple[int, torch.Tensor] | int]  # (first predicting position, target ids) of a form row;
    #                                                a kept row's position whose prediction must stay


def _rows(lm: LanguageModel, requests: Sequence[Request], chat: bool, other_facts: bool) -> _Rows:
    tokens, owner, where, targets = [], [], [], []
    for i, request in enumerate(requests):
        for form in forms(lm, request, chat=chat):
            tokens.append(form.ids + form.target[:-1])
            owner.append(i)
            where.append(form.last)
            targets.append((len(form.ids) - 1, torch.tensor(form.target, device=lm.device)))
        essence, last = essence_tokens(lm, request)
        kept = [(essence, last, last)]  # the essence is read at the subject, the other facts at their end
        if other_facts:
            for other in other_facts_of(request):
                ids, last = subject_tokens(lm, "{}", other)
                kept.append((ids, last, len(ids) - 1))
        for ids, last, read in kept:
            tokens.append(ids)
            owner.append(i)
            where.append(last)
            targets.append(read)
    return _Rows(tokens, owner, where, targets)


class _Suffixes:
    """The rows split at the subject's last token, where the vector is added.

    Nothing before that token depends on the vector (attention is causal), and nothing
    below the block that adds it: so the prefixes run once, the suffixes run once up to
    that block, and every step of the loop runs only the suffixes (the subject's last
    token onwards) through the blocks from there up, over the prefixes' key/value cache.
    A chat form's system prompt and a context sentence cost one pass, not one per step."""

    def __init__(self, lm: LanguageModel, rows: _Rows, module: torch.nn.Module) -> None:
        self.lm, self.rows = lm, rows
        self.width = max(rows.where)
        self.cache = None
        if self.width:
            prefixes = [t[:w] + [0] * (self.width - w) for t, w in zip(rows.tokens, rows.where)]
            body = getattr(lm.model, "base_model", lm.model)  # the cache is wanted, not the logits
            with torch.no_grad():  # plain causal: a prefix's padding is never attended to by its suffix
                out = body(input_ids=torch.tensor(prefixes, device=lm.device), use_cache=True)
            self.cache = out.cache
        blocks = find_blocks(lm.model)
        self.start = next(i for i, b in enumerate(blocks) if any(m is module for m in b.modules()))
        self.entering = None  # each row's suffix as it enters block ``start``
        self.skips = can_start_at(lm.model, self.start)
        if self.skips:
            everything = list(range(len(rows.tokens)))
            with torch.no_grad(), read_input(blocks[self.start]) as seen:
                ids, mask, positions, cache = self._inputs(everything)
                run_until(lm, ids, mask, blocks[self.start], positions=positions, cache=cache)
            self.entering = [seen[0][r, :len(rows.tokens[r]) - rows.where[r]] for r in everything]

    def cast(self, dtype: torch.dtype) -> "_Suffixes | None":
        """A copy with the cached prefixes and the suffixes' entering states in ``dtype`` (for
        the draft loop), or None where the cache's layout is not the one known here."""
        other = copy.copy(self)
        if self.cache is not None:
            if not all(hasattr(layer, "keys") for layer in getattr(self.cache, "layers", [None])):
                return None
            other.cache = copy.deepcopy(self.cache)
            for layer in other.cache.layers:
                layer.keys, layer.values = layer.keys.to(dtype), layer.values.to(dtype)
        if self.entering is not None:
            other.entering = [e.to(dtype) for e in self.entering]
        return other

    def baseline(self, module: torch.nn.Module) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """With no vector added: ``module``'s output at each row's subject's last token, and
        each kept row's log-probabilities (the KL term's reference), by row."""
        outputs, reference = {}, {}
        everything = list(range(len(self.rows.tokens)))
        hidden = self.lm.model.get_input_embeddings().weight.shape[1]
        with torch.no_grad():
            for group in self._groups(everything):
                with read_output(module) as seen:
                    logits = self._run(group, module, torch.zeros(len(group), hidden, device=self.lm.device))
                outputs.update({r: seen[0][j, 0].float() for j, r in enumerate(group)})
                kept = [r for r in group if isinstance(self.rows.targets[r], int)]
                scored = logits[len(logits) - len(kept):]  # the kept rows' positions come last
                reference.update({r: torch.log_softmax(scored[k].float(), -1) for k, r in enumerate(kept)})
        return outputs, reference

    def _groups(self, picked: list[int]) -> list[list[int]]:
        """``picked`` split into form rows and kept rows, see :meth:`logits`."""
        kinds = [[r for r in picked if isinstance(self.rows.targets[r], int) == kept] for kept in (False, True)]
        return [group for group in kinds if group]

    def _inputs(self, picked: list[int]):
        rows, lm = self.rows, self.lm
        suffixes = [rows.tokens[r][rows.where[r]:] for r in picked]
        size = max(len(s) for s in suffixes)
        ids = torch.tensor([s + [0] * (size - len(s)) for s in suffixes], device=lm.device)
        mask = torch.tensor([[1] * rows.where[r] + [0] * (self.width - rows.where[r]) + [1] * size for r in picked],
                            device=lm.device)
        positions = torch.tensor([list(range(rows.where[r], rows.where[r] + size)) for r in picked], device=lm.device)
        cache = None
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)
            if picked != list(range(len(rows.tokens))):
                cache.batch_select_indices(torch.tensor(picked, device=lm.device))
        return ids, mask, positions, cache

    def logits(self, picked: list[int], module: torch.nn.Module, vectors: torch.Tensor) -> torch.Tensor:
        """Logits at ``_scored(rows, picked)`` with ``vectors[j]`` added to ``module``'s output
        at the subject's last token of row ``picked[j]``. Form rows and kept rows run as two
        batches: a kept row is a couple of tokens past its subject, a form row runs to the end
        of its target, and one batch would pad every kept row to a form row's length."""
        place = {r: j for j, r in enumerate(picked)}
        return torch.cat([self._run(group, module, vectors[[place[r] for r in group]]) for group in self._groups(picked)])

    def _run(self, picked: list[int], module: torch.nn.Module, vectors: torch.Tensor) -> torch.Tensor:
        ids, mask, positions, cache = self._inputs(picked)
        at_rows, at_pos = _scored(self.rows, picked)
        with add_to_output(module, range(len(picked)), [0] * len(picked), vectors):
            if not self.skips:
                return logits_at(self.lm, ids, mask, at_rows, at_pos, positions=positions, cache=cache)
            entering = torch.nn.utils.rnn.pad_sequence([self.entering[r] for r in picked], batch_first=True)
            with blocks_from(self.lm.model, self.start):
                return logits_at(self.lm, None, mask, at_rows, at_pos, positions=positions, cache=cache,
                                 inputs_embeds=entering)


def _scored(rows: _Rows, picked: list[int]) -> tuple[list[int], list[int]]:
    """(batch row, suffix position) of every scored position: the target tokens' predictions
    of each form row, then the read position of each kept row."""
    at_rows, at_pos, kept_rows, kept_pos = [], [], [], []
    for j, row in enumerate(picked):
        target = rows.targets[row]
        if isinstance(target, int):
            kept_rows.append(j)
            kept_pos.append(target - rows.where[row])
        else:
            start, tokens = target
            start -= rows.where[row]
            at_rows += [j] * len(tokens)
            at_pos += range(start, start + len(tokens))
    return at_rows + kept_rows, at_pos + kept_pos


def logits_at(lm: LanguageModel, ids: torch.Tensor, mask: torch.Tensor, at_rows: list[int], at_pos: list[int],
              **inputs) -> torch.Tensor:
    """The model's logits at the given (row, position) pairs only: the output head runs on
    those positions, not on the whole batch (it costs a fifth of a small model). ``inputs``
    go to the model as they are (``positions``: its ``position_ids``, ``cache``)."""
    model = lm.model
    if "positions" in inputs:
        inputs["position_ids"] = inputs.pop("positions")
    body = getattr(model, "base_model", model)
    head = model.get_output_embeddings()
    if body is model or head is None:
        return model(input_ids=ids, attention_mask=mask, use_cache=False, **inputs).logits[at_rows, at_pos]
    hidden = body(input_ids=ids, attention_mask=mask, use_cache=False, **inputs).last_hidden_state
    return output_logits(model, hidden[at_rows, at_pos])


def _losses(logits: torch.Tensor, rows: _Rows, picked: list[int], reference: dict[int, torch.Tensor],
            n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per request (of ``n``): the mean target NLL over its form rows, and the mean KL of
    its kept rows. ``logits`` are those of ``_scored(rows, picked)``, in that order."""
    gold, scored, kept = [], [], []  # scored: (row, its number of target tokens)
    for row in picked:
        target = rows.targets[row]
        if isinstance(target, int):
            kept.append(row)
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
    kl_of: dict[int, list[torch.Tensor]] = {}
    for k, row in enumerate(kept):
        current = torch.log_softmax(logits[count + k].float(), -1)
        kl = torch.nn.functional.kl_div(current, reference[row], log_target=True, reduction="sum")
        kl_of.setdefault(rows.owner[row], []).append(kl)
    zero = logits.new_zeros((), dtype=torch.float32)
    nll = torch.stack([torch.stack(per_row[i]).mean() if i in per_row else zero for i in range(n)])
    return nll, torch.stack([torch.stack(kl_of[i]).mean() if i in kl_of else zero for i in range(n)])


def draft_dtype(lm: LanguageModel, settings: ValueSettings) -> torch.dtype | None:
    """bfloat16 where the draft loop is worth it (see the module docstring), else None."""
    if not settings.bfloat16_draft or lm.model.dtype != torch.float32:
        return None
    device = torch.device(lm.device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    return None


@contextmanager
def weights_as(model: torch.nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """While the block runs, the model's floating-point parameters are copies in ``dtype``
    (and, on a CPU, attention runs as plain matrix products: the fused kernel's backward
    pass is slow in bfloat16 there); the original tensors are put back afterwards, so
    nothing changes, bit for bit. ``None`` changes nothing."""
    if dtype is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = [p for p in model.parameters() if p.is_floating_point() and p.dtype != dtype]
    kept = [p.data for p in params]
    cpu = next(model.parameters()).device.type == "cpu"
    try:
        for p in params:
            p.data = p.data.to(dtype)
        with sdpa_kernel(SDPBackend.MATH) if cpu else nullcontext():
            yield
    finally:
        for p, data in zip(params, kept):
            p.data = data


class _Descent:
    """The Adam loop over one group's vectors, in one or more phases (the draft, then the model's precision)."""

    def __init__(self, rows: _Rows, module: torch.nn.Module, n: int, original: torch.Tensor,
                 settings: ValueSettings) -> None:
        self.rows, self.module, self.n, self.settings = rows, module, n, settings
        self.original_norm = original.norm(dim=1)
        self.deltas = torch.zeros_like(original, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.deltas], lr=settings.lr)
        self.limit = settings.clamp_norm * self.original_norm
        self.losses = [float("inf")] * n
        self.steps = [0] * n
        self.step = 0

    def run(self, suffixes: "_Suffixes", reference: dict[int, torch.Tensor]) -> None:
        """Steps until every edit's loss, measured at the current precision, is under the
        stop loss, or the phases together have taken ``steps`` steps; a phase measures at
        least once, and measures the vectors it leaves."""
        rows, settings, deltas = self.rows, self.settings, self.deltas
        done = torch.zeros(self.n, dtype=torch.bool)
        while True:
            live = [r for r, owner in enumerate(rows.owner) if not done[owner]]
            owners = [rows.owner[r] for r in live]
            logits = suffixes.logits(live, self.module, deltas[owners])
            nll, kl = _losses(logits, rows, live, reference, self.n)
            for i in set(owners):
                self.losses[i], self.steps[i] = float(nll[i].detach()), self.step
                if self.losses[i] < settings.stop_loss:
                    done[i] = True
            if bool(done.all()) or self.step >= settings.steps:
                return
            decay = settings.weight_decay * (deltas.norm(dim=1) / self.original_norm) ** 2
            frozen = deltas.detach()[done].clone()
            self.optimizer.zero_grad()
            loss = (nll + settings.kl_factor * kl + decay)[~done].sum()
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                deltas[done] = frozen  # Adam's momentum must not move a finished edit
                norms = deltas.norm(dim=1)
                scale = torch.where(norms > self.limit, self.limit / norms.clamp_min(1e-12), torch.ones_like(norms))
                deltas.mul_(scale.unsqueeze(1))
            self.step += 1


def _optimize_group(lm: LanguageModel, requests: Sequence[Request], module: torch.nn.Module,
                    settings: ValueSettings) -> list[Value]:
    rows = _rows(lm, requests, settings.chat_form, settings.other_facts)
    n = len(requests)
    suffixes = _Suffixes(lm, rows, module)
    outputs, reference = suffixes.baseline(module)
    original = torch.stack([outputs[rows.owner.index(i)] for i in range(n)])  # at each request's first form
    descent = _Descent(rows, module, n, original, settings)
    draft = draft_dtype(lm, settings)
    if draft is not None:
        with weights_as(lm.model, draft):
            drafted = suffixes.cast(draft) or _Suffixes(lm, rows, module)
            descent.run(drafted, drafted.baseline(module)[1])
    descent.run(suffixes, reference)
    return [Value(descent.deltas[i].detach().clone(), descent.losses[i], descent.steps[i]) for i in range(n)]


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
