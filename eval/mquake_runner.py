"""Run a router over MQuAKE cases in the k-edited setting, resumably, and explain the failures.

Cases are split into batches of k over the WHOLE data file (as the benchmark does: with
k = all, the memory holds every case's edits even when only the first ``limit`` cases are
asked). Each batch gets a fresh memory with all of its edits; each asked case's first
``questions`` questions go through the router. One JSON line per case is appended to
``cases.jsonl`` and flushed as soon as the case is done, so a rerun with the same
settings skips the finished cases (a half-written last line is dropped).

For every case answered wrongly, :func:`classify_failure` names the first thing that went
wrong along the chain of its first question: ``decomposition`` (the chain stopped early,
or its sub-question missed the hop although the gold single-hop question would have found
the edit, or the detector rejected the right edit for the sub-question but takes it for the
gold question: the sub-question asked another relation), ``retrieval`` (not even the gold
question finds the edit), ``scope`` (the detector saw the right edit among its candidates
and rejected it, and rejects it for the gold question too), ``contradiction check``
(MeLLo: the right edit was retrieved and the model kept its own answer), ``wrong edit``
(an edit of another fact was applied), ``answer`` (the right edit was applied and the
hop's answer is still wrong: the model did not take the fact's answer, or its
sub-question asked something else about the same entity, which cosine cannot tell apart), ``hop answer`` (no edit involved, the model's own answer is
wrong), ``final answer`` (every hop right, the final line wrong). Routers without a
chain (IKE) get ``single step``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from memedit.checks import whole_number
from memedit.memory import Memory
from memedit.models import DEFAULT_BATCH_SIZE
from memedit.retrievers.steps import Failed, Steps, counted, run_many

from .metrics import answer_matches
from .mquake import MQuAKECase, batches, score_case
from .runner import progress_bar

FAILURES = ("decomposition", "retrieval", "scope", "contradiction check", "wrong edit", "answer", "hop answer",
            "final answer", "single step")


# Settings that may change between a run and its resumption: asking more cases is fine.
RESUMABLE = ("command", "limit")


class RunMismatch(ValueError):
    """The output folder holds a run made with other settings."""


def read_done(path: Path) -> list[dict[str, Any]]:
    """The records already in ``cases.jsonl``; a truncated last line is cut off the file."""
    if not path.exists():
        return []
    records, good = [], 0
    raw = path.read_bytes()
    for line in raw.splitlines(keepends=True):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if good < len(raw):
        with path.open("r+b") as f:
            f.truncate(good)
    return records


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Check that the run in ``out`` (if any) has the same settings, then write ``run.json``.
    Only the command and the number of cases asked may differ."""
    path = out / "run.json"
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(before) | set(settings) if k not in RESUMABLE and before.get(k) != settings.get(k))
        if changed:
            raise RunMismatch(f"{out} holds a run with other settings ({', '.join(f'{k}: {before.get(k)!r} -> {settings.get(k)!r}' for k in changed)}); "
                              "use another --out folder, or delete that one to start again")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def evaluate_mquake(cases: Sequence[MQuAKECase], make_router: Callable[[Memory], Any], k: int | str, out: str | Path,
                    limit: int | None = None, questions: int = 1, settings: dict[str, Any] | None = None,
                    progress: bool = True, open_memory: Callable[[Path], Memory] = Memory,
                    batch_size: int = DEFAULT_BATCH_SIZE, skip: int = 0) -> dict[str, Any]:
    """Evaluate on ``limit`` of ``cases`` after the first ``skip`` (batches of ``k`` over all of them); write
    ``run.json``, ``cases.jsonl``, ``summary.json`` and ``report.md`` under ``out``; return the summary.
    ``batch_size`` cases run together, their generations decoded as one batch (1: one at a
    time). A case that fails is reported with its id and left out of ``cases.jsonl``, so a
    rerun asks it again; the others finish."""
    if questions not in (1, 2, 3):
        raise ValueError(f"questions must be 1, 2 or 3 (how many of each case's questions to ask), got {questions!r}")
    whole_number("skip", skip, 0)
    out = Path(out)
    asked = {c.case_id for c in cases[skip:None if limit is None else skip + limit]}
    if not asked:
        raise ValueError(f"no cases to evaluate: the file has {len(cases)}; check the data file, --skip and --limit")
    groups = batches(cases, k)
    settings = {**(settings or {}), "k": str(k), "limit": limit, "questions": questions, "cases_in_file": len(cases)}
    if skip:
        settings["skip"] = skip
    check_settings(out, settings)
    path = out / "cases.jsonl"
    records = [r for r in read_done(path) if r["case_id"] in asked]
    done = {r["case_id"] for r in records}
    bar = progress_bar(len(asked), progress, initial=len(done))
    failures: list[dict[str, Any]] = []
    clock = [time.time()]
    todo = [(number, case) for number, group in enumerate(groups) for case in group
            if case.case_id in asked and case.case_id not in done]

    def finished(index: int, record: dict[str, Any] | Failed) -> None:
        if isinstance(record, Failed):  # not written: a rerun asks it again
            failures.append({"case_id": todo[index][1].case_id, "error": str(record)})
            print(f"case {todo[index][1].case_id} failed: {record}", file=sys.stderr)
            return
        # the run's time since the case before finished: summed, the run's wall time
        now = time.time()
        record["seconds"], clock[0] = round(now - clock[0], 2), now
        sink.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        sink.flush()
        os.fsync(sink.fileno())
        records.append(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(acc=f"{100 * sum(r['correct'] for r in records) / len(records):.1f}")

    try:
        with tempfile.TemporaryDirectory() as tmp, path.open("a", encoding="utf-8") as sink:
            memories = BatchMemories(groups, todo, lambda n: open_memory(Path(tmp) / f"batch-{n}.db"), make_router)
            try:
                if todo:
                    model = memories.peek(todo[0][0]).model
                    machines = (memories.case_steps(number, case, questions) for number, case in todo)
                    run_many(model, machines, batch_size, on_done=finished)
            finally:
                memories.close()
    finally:
        if bar is not None:
            bar.close()
    summary = summarize_mquake(records)
    summary["failed"] = failures
    (out / "summary.json").write_text(json.dumps({"meta": settings, "summary": summary}, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_report(summary, settings), encoding="utf-8")
    return summary


class BatchMemories:
    """One memory (with its router) per batch of k cases, opened when the batch's first case
    starts and closed after its last, so that the cases of many batches run together."""

    def __init__(self, groups: list[list[MQuAKECase]], todo: list[tuple[int, MQuAKECase]],
                 open_memory: Callable[[int], Memory], make_router: Callable[[Memory], Any]) -> None:
        self.groups, self.open_memory, self.make_router = groups, open_memory, make_router
        self.left = Counter(number for number, _ in todo)
        self.open: dict[int, tuple[Memory, Any]] = {}

    def peek(self, number: int) -> Any:
        """The router of batch ``number``, opening its memory if needed."""
        if number not in self.open:
            memory = self.open_memory(number)
            try:
                memory.add_many([e for c in self.groups[number] for e in c.edits])
                self.open[number] = (memory, self.make_router(memory))
            except BaseException:
                memory.close()
                raise
        return self.open[number][1]

    def case_steps(self, number: int, case: MQuAKECase, questions: int) -> Steps[dict[str, Any]]:
        """:func:`case_steps` on batch ``number``'s memory, released when the case ends."""
        try:
            router = self.peek(number)
            return (yield from case_steps(router, self.open[number][0], case, questions, number, len(self.groups[number])))
        finally:
            self.left[number] -= 1
            if self.left[number] <= 0 and number in self.open:
                self.open.pop(number)[0].close()

    def close(self) -> None:
        for memory, _ in self.open.values():
            memory.close()
        self.open.clear()


def case_steps(router, memory: Memory, case: MQuAKECase, questions: int, batch: int, batch_cases: int) -> Steps[dict[str, Any]]:
    """Ask the case's first ``questions`` questions, as a step machine (see
    :mod:`memedit.retrievers.steps`), so that many cases run together; returns the scored
    record with every trace (``latency_seconds``: from its first question to its score)."""
    started = time.time()
    asked = []
    calls = [0]
    for question in case.questions[:questions]:
        answer = yield from counted(router.answer_steps(question), calls)
        chain = next((s["answers"] for s in answer.trace if s["step"] == "chain_answers"), None)
        asked.append({"question": question, "answer": answer.text, "route": answer.route, "chain": chain,
                      "edits_used": [e.id for e in answer.edits_used], "trace": answer.trace})
    scores = score_case(case, [a["answer"] for a in asked], [a["chain"] or [] for a in asked])
    failure = None if scores["correct"] else classify_failure(case, asked[0]["trace"], memory, getattr(router, "detector", None))
    return {"case_id": case.case_id, "batch": batch, "batch_cases": batch_cases, **scores, "failure": failure,
            "new_answer": case.new_answers[0], "old_answer": case.old_answers[0] if case.old_answers else None,
            "latency_seconds": round(time.time() - started, 2), "model_calls": calls[0], "questions": asked}


def classify_failure(case: MQuAKECase, trace: list[dict[str, Any]], memory: Memory, detector: Any = None) -> str:
    """The first thing that went wrong along the chain (see the module's docstring);
    ``detector``, the router's scope detector, tells a rejected edit's scope miss from a
    sub-question that asked something else."""
    hops = [s for s in trace if s["step"] == "hop"]
    if not any(s["step"] == "chain" for s in trace):
        return "single step"
    edit_index = case.edit_for_hop()
    for i, gold in enumerate(case.new_hops):
        if i >= len(hops):
            return "decomposition"
        hop = hops[i]
        if answer_matches(hop["answer"], gold.answers):
            continue
        expected = case.edits[edit_index[i]].statement if edit_index[i] is not None else None
        used = (hop.get("edit") or {}).get("statement")
        applied = bool(hop.get("contradicts") or hop.get("in_scope"))
        if expected is None:
            return "wrong edit" if applied else "hop answer"
        if used == expected:
            return ("answer" if applied else "contradiction check") if "contradicts" in hop else ("answer" if applied else "scope")
        if any(c.get("statement") == expected for c in hop.get("candidates", [])):
            best = detector.decide(gold.question).best if detector is not None else None
            return "decomposition" if best is not None and best.statement == expected else "scope"
        if applied:
            return "wrong edit"
        found = memory.search(gold.question, k=1)
        return "decomposition" if found and found[0].edit.statement == expected else "retrieval"
    return "final answer"


def summarize_mquake(records: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    pct = (lambda key: round(100 * sum(bool(r[key]) for r in records) / n, 2)) if n else (lambda key: None)
    failures = Counter(r["failure"] for r in records if r["failure"])
    return {"cases": n, "accuracy": pct("correct"), "hop_accuracy": pct("hop_correct"), "old_answer": pct("old"),
            "failures": dict(failures.most_common()),
            "seconds_per_case": round(sum(r["seconds"] for r in records) / n, 2) if n else None,
            "calls_per_case": _mean([r["model_calls"] for r in records if "model_calls" in r])}


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def render_report(summary: dict[str, Any], settings: dict[str, Any]) -> str:
    lines = [f"# MQuAKE: {settings.get('router', '?')} on {settings.get('model', '?')}", "",
             f"- data: `{settings.get('data', '?')}` ({settings['cases_in_file']} cases in the file)",
             f"- k = {settings['k']}: batches of k consecutive cases over the whole file; the memory holds all edits of a batch",
             f"- asked: {summary['cases']} cases from case {settings.get('skip', 0) + 1} in file order, {settings['questions']} question(s) each; a case counts if any is "
             "answered with the new answer or an alias",
             f"- loop limit: {settings.get('max_hops', '–')} hops",
             f"- command: `{settings.get('command', '–')}`", "",
             "| cases | multi-hop accuracy | hop-wise accuracy | still the old answer | s/case | model calls/case |",
             "|---|---|---|---|---|---|",
             f"| {summary['cases']} | {summary['accuracy']} | {summary['hop_accuracy']} | {summary['old_answer']} | "
             f"{summary['seconds_per_case']} | {summary.get('calls_per_case') or '–'} |",
             "", "What failed first (cases answered wrongly, counted from the traces):", ""]
    lines += [f"- {name}: {count}" for name, count in summary["failures"].items()] or ["- nothing"]
    return "\n".join(lines) + "\n"
