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
from memedit.models import LanguageModel

from .cases import Case, Probe
from .metrics import answer_matches, ngram_entropy, summarize

SCORINGS = ("exact_match", "token_accuracy")


class BaseAnswers:
    """The unedited model's answers (and prompts), computed once per question and shared."""

    def __init__(self, router) -> None:
        self.router = router
        self._texts: dict[str, str] = {}

    def text(self, question: str) -> str:
        if question not in self._texts:
            self._texts[question] = self.router.model.generate(self.router.base_prompt(question),
                                                               max_new_tokens=self.router.max_new_tokens)
        return self._texts[question]


def score_probe(router, base: BaseAnswers, case: Case, probe: Probe, scorings: tuple[str, ...]) -> dict[str, Any]:
    """Ask one probe through the router and score it; returns one result row."""
    model: LanguageModel = router.model
    started = time.perf_counter()
    plan = router.plan(probe.prompt)
    if plan.route == "base":  # the unedited answer, already computed once for this question
        plan.text = base.text(probe.prompt)
        plan.trace.append({"step": "base", "text": plan.text})
    answer = router.run(plan)
    row: dict[str, Any] = {"case_id": case.case_id, "metric": probe.metric, "subtype": probe.subtype,
                           "prompt": probe.prompt, "answers": list(probe.answers), "answer": answer.text,
                           "route": answer.route, "edits_used": [e.id for e in answer.edits_used]}
    locality = probe.metric == "locality"
    if locality:
        row["base_answer"] = base.text(probe.prompt)
    if "exact_match" in scorings:
        ok = answer.text == row["base_answer"] if locality else answer_matches(answer.text, probe.answers)
        row["exact_match"] = float(ok)
    if "token_accuracy" in scorings:
        row["token_accuracy"] = _token_accuracy(model, router, plan, probe, row.get("base_answer"))
    row["seconds"] = round(time.perf_counter() - started, 3)
    row["trace"] = answer.trace
    return row


def _token_accuracy(model: LanguageModel, router, plan, probe: Probe, base_answer: str | None) -> float:
    if plan.route == "erase":
        return 0.0
    if probe.metric != "locality":
        return max(model.score(plan.prompt, target).token_accuracy for target in probe.answers)
    if plan.route == "base":
        return 1.0
    reference = probe.answers[0] if probe.answers else base_answer
    if not reference:
        return 1.0
    after = model.score(plan.prompt, reference).predicted_ids
    before = model.score(router.base_prompt(probe.prompt), reference).predicted_ids
    return sum(a == b for a, b in zip(after, before)) / len(before)


def evaluate(cases: list[Case], make_router: Callable[[Memory], Any], scorings: Iterable[str] = SCORINGS,
             batch_size: int | None = None, progress: bool = True, workdir: str | Path | None = None
             ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Evaluate a router on ``cases``; returns (summary per scoring, per-probe rows).

    ``make_router(memory)`` builds the router over a memory holding the batch's edits.
    ``batch_size`` cases share a memory (None: all of them, the hardest setting).
    """
    scorings = tuple(scorings)
    unknown = set(scorings) - set(SCORINGS)
    if unknown or not scorings:
        raise ValueError(f"scorings must be some of {', '.join(SCORINGS)}; got {', '.join(scorings) or 'none'}")
    if not cases:
        raise ValueError("no cases to evaluate; check the data file and --limit")
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
                base = BaseAnswers(router)
                for case in batch:
                    rows.extend(score_probe(router, base, case, p, scorings) for p in case.probes)
                    if bar is not None:
                        bar.update(1)
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
