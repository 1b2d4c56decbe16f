"""Consolidation: move a memory's triple edits into a model's weights, verified and reversible.

``consolidate`` writes a batch with ROME or MEMIT, then checks every edit on both paths a
user takes (does the greedy continuation of its cloze prompt start with the target, and
does the greedy reply to it asked as a chat question, the routers' base prompt?) and a
locality sample (do unrelated prompts, raw and asked as chat questions, keep their greedy
continuation?). A batch that costs more locality
than ``max_locality_loss`` is rolled back, bit for bit, and its edits stay on the
retrieval path. Otherwise the batch is journaled (see ``deltas``), the edits that took are
marked ``consolidated`` and leave the retrieval path, and the ones that did not stay on it.
``revert`` takes a batch out again. This module handles the weights; the edits' statuses
and their events are the memory's (``Memory.mark_consolidated`` and ``mark_reverted``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from memedit.layout import find_blocks, mlp_down
from memedit.models import LanguageModel
from memedit.store import StoredEdit

from .deltas import WeightJournal, tensor_sha256
from .memit import apply_memit
from .rome import apply_rome
from .settings import EditorSettings, default_settings
from .stats import key_covariance
from .tracing import Request, chat_prompt, encode, pad, reliability

MAX_LOCALITY_LOSS = 0.1
LOCALITY_TOKENS = 5
# Unrelated facts whose continuations a batch must leave alone (our own list).
LOCALITY_PROMPTS = (
    "The capital of Japan is", "The Eiffel Tower is located in the city of", "Water is made of hydrogen and",
    "The play Romeo and Juliet was written by", "The largest planet in the solar system is",
    "The chemical symbol for gold is", "The official language of Brazil is", "The currency of the United Kingdom is the",
    "Albert Einstein was born in", "The Great Wall is located in", "The first president of the United States was",
    "The tallest mountain in the world is", "Paris is the capital of", "The Amazon river flows through",
    "The telephone was invented by", "Mozart was a famous", "The Moon orbits the", "Python is a programming",
    "The Pacific is the largest", "Photosynthesis takes place in the",
)
EDITORS = {"rome": apply_rome, "memit": apply_memit}


@dataclass
class EditOutcome:
    """What consolidation did with one edit: ``status`` is ``consolidated`` (in the weights,
    off the retrieval path), ``kept`` (stays on the retrieval path) or ``skipped``."""

    edit_id: str
    status: str
    reason: str = ""
    reliability: float | None = None
    chat_reliability: float | None = None


@dataclass
class ConsolidationReport:
    """The outcome of one ``consolidate`` call."""

    method: str
    batch: str | None = None
    committed: bool = False
    reason: str = ""
    locality: float | None = None
    outcomes: list[EditOutcome] = field(default_factory=list)
    layers: tuple[int, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def consolidated(self) -> list[str]:
        return [o.edit_id for o in self.outcomes if o.status == "consolidated"]

    @property
    def kept(self) -> list[str]:
        return [o.edit_id for o in self.outcomes if o.status == "kept"]

    @property
    def skipped(self) -> list[str]:
        return [o.edit_id for o in self.outcomes if o.status == "skipped"]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out

    def lines(self) -> list[str]:
        """A human-readable report: the batch, then one line per edit."""
        head = (f"batch {self.batch} ({self.method}, layers {', '.join(map(str, self.layers))}): "
                f"{len(self.consolidated)} consolidated, {len(self.kept)} kept on the retrieval path, {len(self.skipped)} skipped"
                if self.committed else f"nothing written ({self.method}): {self.reason}")
        lines = [head]
        if self.locality is not None:
            lines.append(f"locality sample: {self.locality:.1%} of greedy tokens unchanged")
        for o in self.outcomes:
            score = "" if o.reliability is None else (f" (target tokens right: cloze {o.reliability:.0%}, "
                                                      f"chat {o.chat_reliability:.0%})")
            lines.append(f"  {o.edit_id}  {o.status}{score}{': ' + o.reason if o.reason else ''}")
        return lines


def unusable(edit: StoredEdit) -> str | None:
    """Why this edit cannot be written into the weights, or None."""
    if edit.status != "active":
        return f"is {edit.status}; only active edits are consolidated"
    if not edit.is_triple:
        return "free-text edit: ROME and MEMIT need subject, prompt and target; it stays on the retrieval path"
    if edit.kind == "erase" or not edit.target:
        return "erase edit: there is no target to write into the weights; it stays on the retrieval path"
    return None


def failed_forms(cloze: float, chat: float) -> str:
    """Which forms of an edit do not give its target as the greedy answer ("" when both do)."""
    failed = [name for name, score in (("cloze prompt", cloze), ("chat question", chat)) if score < 1.0]
    return " and ".join(failed)


def locality_rows(lm: LanguageModel, prompts: Sequence[str]) -> list[list[int]]:
    """The locality sample's token rows: each prompt as raw text, then asked as a chat question."""
    return [encode(lm, p) for p in prompts] + [lm.prompt_ids(chat_prompt(lm, p)) for p in prompts]


def greedy_tokens(lm: LanguageModel, rows: Sequence[list[int]], n: int = LOCALITY_TOKENS) -> list[list[int]]:
    """The greedy next ``n`` tokens after each row of token ids."""
    out = []
    with torch.no_grad():
        for row in rows:
            ids = list(row)
            for _ in range(n):
                logits = lm.model(input_ids=torch.tensor([ids], device=lm.device), use_cache=False).logits
                ids = ids + [int(logits[0, -1].argmax())]
            out.append(ids[-n:])
    return out


def locality(lm: LanguageModel, prompts: Sequence[list[int]], before: list[list[int]]) -> float:
    """Share of the earlier greedy tokens after each row of ``prompts`` that are still the
    greedy choice (teacher-forced)."""
    rows = [list(p) + b for p, b in zip(prompts, before)]
    ids, mask = pad(lm, rows)
    with torch.no_grad():
        logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    same = total = 0
    for i, tokens in enumerate(before):
        start = len(rows[i]) - len(tokens) - 1
        predicted = logits[i, start:start + len(tokens)].argmax(-1).tolist()
        same += sum(int(p == t) for p, t in zip(predicted, tokens))
        total += len(tokens)
    return same / total if total else 1.0


def _resolve(memory, edits: Iterable[Any] | None) -> list[StoredEdit]:
    if edits is None:
        return memory.list()
    out = []
    for item in edits:
        edit_id = item if isinstance(item, str) else getattr(item, "id", None)
        if not isinstance(edit_id, str):
            raise TypeError(f"edits must be edit ids or stored edits, got {type(item).__name__}")
        out.append(memory.get(edit_id))
    return out


def consolidate(memory, model: LanguageModel, method: str = "memit", edits: Iterable[Any] | None = None,
                verify: bool = True, max_locality_loss: float = MAX_LOCALITY_LOSS,
                locality_prompts: Sequence[str] | None = None, progress: bool = False,
                stats_root: str | Path | None = None, **settings: Any) -> ConsolidationReport:
    """Write ``memory``'s active triple edits (or the given ``edits``) into ``model`` with
    ``method`` ("memit" or "rome"); see the module docstring. ``settings`` override the
    family defaults (``layers``, ``stats_tokens``, ``mom2_weight``, ``retries``, ``steps``, ``lr``, ...);
    ``stats_root`` is where key statistics are cached (default ``<cache>/stats``)."""
    if not 0 <= max_locality_loss <= 1:
        raise ValueError(f"max_locality_loss must be from 0 to 1 (a share of locality tokens), got {max_locality_loss!r}")
    journal = WeightJournal.attach(model, memory)
    chosen = default_settings(model, method, **settings)
    report = ConsolidationReport(method, layers=chosen.layers)
    candidates = _resolve(memory, edits)
    requests = []
    for edit in candidates:
        why = unusable(edit)
        if why:
            report.outcomes.append(EditOutcome(edit.id, "skipped", why))
        else:
            requests.append(Request.from_edit(edit))
    if not requests:
        report.reason = "no active triple edit with a target to consolidate"
        return report
    with memory.lock:
        journal.sync()
        _write_batch(memory, model, journal, chosen, requests, report, verify, max_locality_loss,
                     tuple(locality_prompts or LOCALITY_PROMPTS), progress, stats_root)
    return report


def _write_batch(memory, lm: LanguageModel, journal: WeightJournal, settings: EditorSettings, requests: list[Request],
                 report: ConsolidationReport, verify: bool, max_loss: float, prompts: tuple[str, ...], progress: bool,
                 stats_root: str | Path | None) -> None:
    started = time.perf_counter()
    stats = key_covariance(lm, settings.layers, settings.stats_tokens, Path(stats_root) if stats_root else None, progress=progress)
    report.seconds["statistics"] = stats.seconds
    blocks = find_blocks(lm.model)
    names = {id(p): n for n, p in lm.model.named_parameters()}
    touched = [names[id(mlp_down(blocks[layer]).weight)] for layer in settings.layers]
    journal.keep_base(touched)
    params = journal.parameters
    before = {n: params[n].detach().clone() for n in touched}
    base_sha = {n: tensor_sha256(journal.base[n]) for n in touched}
    sample = locality_rows(lm, prompts) if verify else []
    locality_before = greedy_tokens(lm, sample) if verify else None

    t0 = time.perf_counter()
    try:
        EDITORS[settings.method](lm, requests, settings, stats.matrices, progress=progress)
        deltas = {n: params[n].detach() - before[n] for n in touched}
        journal.set_weights({n: before[n] + deltas[n] for n in touched})  # the form a rebuild computes
    except BaseException:
        journal.set_weights(before)
        raise
    report.seconds["edit"] = time.perf_counter() - t0

    took = {r.edit_id: reliability(lm, r) for r in requests}
    if verify:
        report.locality = locality(lm, sample, locality_before)
    good = [r.edit_id for r in requests if not verify or not failed_forms(*took[r.edit_id])]
    problem = ""
    if verify and 1 - report.locality > max_loss:
        problem = (f"the batch changed {1 - report.locality:.1%} of the locality sample's greedy tokens, over the bound of "
                   f"{max_loss:.0%}; the weights were restored")
    elif not good:
        problem = "no edit's target became the greedy answer of both its cloze prompt and its chat question; the weights were restored"
    if problem:
        journal.set_weights(before)
        report.reason = problem
        for r in requests:
            failed = failed_forms(*took[r.edit_id]) if verify else ""
            why = "batch rolled back" + (f"; its {failed} did not give the target" if failed else "")
            report.outcomes.append(EditOutcome(r.edit_id, "kept", why, *took[r.edit_id]))
        report.seconds["total"] = time.perf_counter() - started
        return

    batch = "b" + uuid.uuid4().hex[:12]

    def record(ids: list[str]) -> dict[str, Any]:
        meta = {"batch": batch, "method": settings.method, "layers": list(settings.layers), "model": str(lm.name),
                "edits": ids, "base_sha256": base_sha, "after_sha256": {n: tensor_sha256(params[n]) for n in touched}}
        artifact = journal.record(batch, deltas, meta)
        return {"artifact": artifact, "method": settings.method, "layers": list(settings.layers),
                "model": str(lm.name), "locality": report.locality}

    try:
        good = memory.mark_consolidated(batch, good, record)
    except BaseException:
        journal.set_weights(before)  # nothing was journaled, so the weights must not carry the batch
        raise
    journal.applied.append(batch)
    report.batch, report.committed = batch, True
    for r in requests:
        if r.edit_id in good:
            report.outcomes.append(EditOutcome(r.edit_id, "consolidated", "", *took[r.edit_id]))
        else:
            failed = failed_forms(*took[r.edit_id]) if verify else ""
            why = (f"its target is not the greedy answer of its {failed} after the batch" if failed
                   else "it was no longer active when the batch was recorded")
            report.outcomes.append(EditOutcome(r.edit_id, "kept", why + "; it stays on the retrieval path", *took[r.edit_id]))
    report.seconds["total"] = time.perf_counter() - started


def revert(memory, batch: str, model: LanguageModel | None = None) -> list[str]:
    """Take ``batch`` out of force: its edits go back on the retrieval path (or become
    superseded, if a newer edit on the same subject and relation is active), its delta is
    deleted, and ``model`` (if given) is recomputed without it. Returns the edit ids."""
    with memory.lock:
        info, back = memory.mark_reverted(batch)
        if model is not None:
            WeightJournal.attach(model, memory).sync()
        memory.artifacts.delete(info["artifact"])
    return back


def apply_consolidated(memory, model: LanguageModel) -> list[str]:
    """Make ``model`` (a freshly loaded base model) carry ``memory``'s consolidation batches
    in force; returns their ids."""
    with memory.lock:
        return WeightJournal.attach(model, memory).sync()
