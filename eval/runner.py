"""Run a router over evaluation cases, the way it runs in deployment, and score every probe.

All edits of a batch are stored in a fresh memory first; then every probe (locality ones
included) is asked through the router, which retrieves and decides scope on its own: the
evaluator never says which edit applies. Two scorings, both always named in reports:

- ``exact_match``: the greedy answer's first line contains an accepted answer (see
  :func:`metrics.answer_matches`); for locality, the answer is byte-identical to the
  unedited model's answer to the same question.
- ``token_accuracy``: teacher-forced, the share of the target's tokens that are the
  model's greedy choice after the router's prompt (KnowEdit's measure); for locality, the
  share of positions where the prediction after the router's prompt equals the prediction
  after the unedited prompt, along the data set's ground truth. A refusal scores 0.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from memedit.memory import Memory
from memedit.models import DEFAULT_BATCH_SIZE, LanguageModel, Request, check_batch_size
from memedit.retrievers.steps import Failed, run_many

from .cases import Case, Probe
from .metrics import answer_matches, ngram_entropy, summarize

SCORINGS = ("exact_match", "token_accuracy")


class BaseAnswers:
    """The unedited model's answers, computed once per question and shared; ``fill`` computes
    many at once."""

    def __init__(self, router, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.router = router
        self.batch_size = batch_size
        self._texts: dict[str, str] = {}

    def fill(self, questions: Iterable[str]) -> None:
        todo = list(dict.fromkeys(q for q in questions if q not in self._texts))
        if not todo:
            return
        requests = [Request(self.router.base_prompt(q), self.router.max_new_tokens) for q in todo]
        self._texts.update(zip(todo, self.router.model.generate_many(requests, batch_size=self.batch_size)))

    def text(self, question: str) -> str:
        self.fill([question])
        return self._texts[question]


def score_probes(router, base: BaseAnswers, asked: list[tuple[Case, Probe]], scorings: tuple[str, ...],
                 batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict[str, Any]]:
    """Ask the probes through the router and score them, their generations and teacher-forced
    scores batched ``batch_size`` rows at a time; one result row per probe, in order."""
    model: LanguageModel = router.model
    started = time.perf_counter()
    plans = _all(run_many(model, (router.plan_steps(probe.prompt) for _, probe in asked), batch_size), asked)
    base.fill(probe.prompt for (_, probe), plan in zip(asked, plans) if plan.route == "base" or probe.metric == "locality")
    for (_, probe), plan in zip(asked, plans):
        if plan.route == "base":  # the unedited answer, already computed once for this question
            plan.text = base.text(probe.prompt)
            plan.trace.append({"step": "base", "text": plan.text})
    answers = _all(run_many(model, (router.run_steps(plan) for plan in plans), batch_size), asked)
    accuracies = _token_accuracies(model, router, plans, [p for _, p in asked], base, batch_size) \
        if "token_accuracy" in scorings else None
    seconds = round((time.perf_counter() - started) / max(len(asked), 1), 3)
    rows = []
    for n, ((case, probe), answer) in enumerate(zip(asked, answers)):
        row: dict[str, Any] = {"case_id": case.case_id, "metric": probe.metric, "subtype": probe.subtype,
                               "prompt": probe.prompt, "answers": list(probe.answers), "answer": answer.text,
                               "route": answer.route, "edits_used": [e.id for e in answer.edits_used]}
        locality = probe.metric == "locality"
        if locality:
            row["base_answer"] = base.text(probe.prompt)
        if "exact_match" in scorings:
            ok = answer.text == row["base_answer"] if locality else answer_matches(answer.text, probe.answers)
            row["exact_match"] = float(ok)
        if accuracies is not None:
            row["token_accuracy"] = accuracies[n]
        row["seconds"] = seconds  # the batch's time per probe
        row["trace"] = answer.trace
        rows.append(row)
    return rows


def _all(results: list, asked: list[tuple[Case, Probe]]) -> list:
    """The results, or a ProbeError naming the first case whose probe failed."""
    for (case, probe), result in zip(asked, results):
        if isinstance(result, Failed):
            raise ProbeError(f"case {case.case_id}: probe {probe.prompt!r} failed: {result}") from result.error
    return results


class ProbeError(RuntimeError):
    """A probe could not be answered; the message names its case."""


def _token_accuracies(model: LanguageModel, router, plans, probes: list[Probe], base: BaseAnswers,
                      batch_size: int) -> list[float]:
    """Each probe's token accuracy (see the module's docstring), the scores batched."""
    items: list[tuple[Any, str]] = []
    plan_of: list[tuple[str, list[int]]] = []  # (kind, indexes into items)
    for plan, probe in zip(plans, probes):
        if plan.route == "erase":
            plan_of.append(("zero", []))
        elif probe.metric != "locality":
            first = len(items)
            items += [(plan.prompt, target) for target in probe.answers]
            plan_of.append(("max", list(range(first, len(items)))))
        elif plan.route == "base":
            plan_of.append(("one", []))
        else:
            reference = probe.answers[0] if probe.answers else base.text(probe.prompt)
            if not reference:
                plan_of.append(("one", []))
                continue
            items += [(plan.prompt, reference), (router.base_prompt(probe.prompt), reference)]
            plan_of.append(("same", [len(items) - 2, len(items) - 1]))
    scores = model.score_many(items, batch_size=batch_size) if items else []
    out = []
    for kind, index in plan_of:
        if kind == "zero":
            out.append(0.0)
        elif kind == "one":
            out.append(1.0)
        elif kind == "max":
            out.append(max(scores[i].token_accuracy for i in index))
        else:
            after, before = scores[index[0]].predicted_ids, scores[index[1]].predicted_ids
            out.append(sum(a == b for a, b in zip(after, before)) / len(before))
    return out


def evaluate(cases: list[Case], make_router: Callable[[Memory], Any], scorings: Iterable[str] = SCORINGS,
             batch_size: int | None = None, progress: bool = True, workdir: str | Path | None = None,
             generation_batch: int = DEFAULT_BATCH_SIZE) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Evaluate a router on ``cases``; returns (summary per scoring, per-probe rows).

    ``make_router(memory)`` builds the router over a memory holding the batch's edits.
    ``batch_size`` cases share a memory (None: all of them, the hardest setting).
    ``generation_batch`` prompts are decoded together (1: one at a time); the probes of
    that many cases are planned before any is generated.
    """
    scorings = tuple(scorings)
    unknown = set(scorings) - set(SCORINGS)
    if unknown or not scorings:
        raise ValueError(f"scorings must be some of {', '.join(SCORINGS)}; got {', '.join(scorings) or 'none'}")
    if not cases:
        raise ValueError("no cases to evaluate; check the data file and --limit")
    check_batch_size(generation_batch)
    size = batch_size or len(cases)
    rows: list[dict[str, Any]] = []
    bar = progress_bar(len(cases), progress)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        memory = Memory(Path(tmp) / "eval.db")
        try:
            for number, start in enumerate(range(0, len(cases), size)):
                batch = cases[start:start + size]
                space = memory.with_namespace(f"batch-{number}")
                space.add_many([c.edit for c in batch])
                router = make_router(space)
                base = BaseAnswers(router, generation_batch)
                for first in range(0, len(batch), generation_batch):
                    chunk = batch[first:first + generation_batch]
                    rows.extend(score_probes(router, base, [(c, p) for c in chunk for p in c.probes], scorings,
                                             generation_batch))
                    if bar is not None:
                        bar.update(len(chunk))
                        bar.set_postfix(_running(rows, scorings[0]))
        finally:
            memory.close()
            if bar is not None:
                bar.close()
    return summarize_rows(rows, scorings), rows


def summarize_rows(rows: list[dict[str, Any]], scorings: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per scoring, the metric summary, plus fluency of the answers (n-gram entropy)."""
    summary = {}
    by_case: dict[str, list[str]] = {}
    for row in rows:
        by_case.setdefault(row["case_id"], []).append(row["answer"])
    fluency = sum(ngram_entropy(" ".join(a)) for a in by_case.values()) / max(len(by_case), 1)
    for scoring in scorings:
        summary[scoring] = {**summarize({**r, "correct": r[scoring]} for r in rows), "fluency": fluency}
    return summary


def _running(rows: list[dict[str, Any]], scoring: str) -> dict[str, str]:
    out = {}
    for metric in ("reliability", "locality", "portability"):
        values = [r[scoring] for r in rows if r["metric"] == metric]
        if values:
            out[metric[:3]] = f"{100 * sum(values) / len(values):.1f}"
    return out


def progress_bar(total: int, enabled: bool, initial: int = 0):
    """A tqdm bar over cases on stderr (``initial`` already done), or None when disabled."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="cases", unit="case", file=sys.stderr)
