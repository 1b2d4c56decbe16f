"""Throughput: the same cases on the same model, one generation at a time against batched.

Run from the repository root (one process; give it the machine):

    python bench/throughput.py --model qwen2.5-1.5b --knowedit-cases 16 --mquake-cases 16
    python bench/throughput.py --model smollm2-135m --dtype bfloat16     # bfloat16 beside float32
    python bench/throughput.py --device cuda --batch-size 32               # where a GPU is lent

Three workloads, each run twice in this process, first with ``--batch-size 1`` (every
generation and teacher-forced score alone, as before batching), then batched:

- chat questions: ``--prompts`` short questions with the routers' answer system prompt
  (cached prefix), up to 24 tokens each (``LanguageModel.generate_many`` alone);
- KnowEdit wiki_counterfact, SERAC, the first N cases in one memory, both scorings (the
  ``memedit eval knowedit`` path: ``eval.runner.evaluate``);
- MQuAKE-hard, PokeMQA with the edit detector, k = 1, the first N cases (the
  ``memedit eval mquake`` path: ``eval.mquake_runner.evaluate_mquake``).

For each: seconds, cases/s, generated tokens/s, the ratio batched / one at a time, and
whether every answer, route and score matched. ``--dtype bfloat16`` adds a third run
(batched, bfloat16 weights) and says how many of its answers equal float32's.
Figures are printed and written as JSON to ``--results``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from memedit.model_files import data_dir


QUESTIONS = ("What is the capital of Peru?", "Who wrote Hamlet?", "Name a primary colour.", "What is two plus two?",
             "Which river flows through Cairo?", "Who painted the Mona Lisa?", "What language is spoken in Brazil?",
             "Where is Mount Fuji?", "Who discovered penicillin?", "What is the largest ocean?", "Which planet is red?",
             "Who founded Microsoft?", "What is the currency of Japan?", "In which country is Toronto?",
             "Who composed the Magic Flute?", "What is H2O?")


def prompts_run(lm, count: int, batch_size: int) -> dict:
    from memedit.models import Request
    from memedit.retrievers.base import ANSWER_SYSTEM

    questions = [QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})") for i in range(count)]
    requests = [Request(lm.chat([{"role": "system", "content": ANSWER_SYSTEM}, {"role": "user", "content": q}],
                                cache_turns=1), 24, ()) for q in questions]
    tokens, started = lm.tokens_generated, time.perf_counter()
    answers = lm.generate_many(requests, batch_size=batch_size)
    return {"seconds": time.perf_counter() - started, "cases": count, "tokens": lm.tokens_generated - tokens,
            "answers": answers}


def knowedit_run(lm, cases, batch_size: int) -> dict:
    from memedit.edited_model import make_router
    from memedit.embeddings import get_embedder
    from memedit.eval.runner import evaluate
    from memedit.retrievers.detector import load_classifier

    scope = load_classifier("edit", embedder=get_embedder())
    tokens, started = lm.tokens_generated, time.perf_counter()
    summary, rows = evaluate(cases, lambda memory: make_router("serac", lm, memory, k=5, scope=scope),
                             progress=False, generation_batch=batch_size)
    seconds = time.perf_counter() - started
    answers = [(r["case_id"], r["prompt"], r["answer"], r["route"], r["exact_match"], round(r["token_accuracy"], 6))
               for r in rows]
    return {"seconds": seconds, "cases": len(cases), "tokens": lm.tokens_generated - tokens, "answers": answers,
            "reliability": summary["exact_match"]["reliability"], "locality": summary["exact_match"]["locality"]}


def mquake_run(lm, cases, limit: int, batch_size: int) -> dict:
    from memedit import Memory
    from memedit.edited_model import make_router
    from memedit.embeddings import get_embedder
    from memedit.eval.mquake_runner import evaluate_mquake
    from memedit.retrievers.detector import load_classifier

    embedder = get_embedder()
    detector = load_classifier("edit", embedder=embedder)
    tokens, started = lm.tokens_generated, time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        summary = evaluate_mquake(cases, lambda memory: make_router("pokemqa", lm, memory, detector=detector), 1,
                                  out, limit=limit, progress=False, batch_size=batch_size,
                                  open_memory=lambda p: Memory(p, embedder=embedder))
        records = [json.loads(line) for line in (Path(out) / "cases.jsonl").read_text().splitlines()]
    seconds = time.perf_counter() - started
    records.sort(key=lambda r: r["case_id"])
    answers = [(r["case_id"], r["questions"][0]["answer"], r["questions"][0]["chain"], r["correct"]) for r in records]
    return {"seconds": seconds, "cases": summary["cases"], "tokens": lm.tokens_generated - tokens, "answers": answers,
            "accuracy": summary["accuracy"], "failed": len(summary["failed"])}


def figures(run: dict) -> dict:
    return {"seconds": round(run["seconds"], 1), "cases_per_s": round(run["cases"] / run["seconds"], 4),
            "tokens_per_s": round(run["tokens"] / run["seconds"], 1), "tokens": run["tokens"], "cases": run["cases"]}


def compare(name: str, one: dict, many: dict, extra: dict | None) -> dict:
    same = sum(a == b for a, b in zip(one["answers"], many["answers"]))
    row = {"workload": name, "one_at_a_time": figures(one), "batched": figures(many),
           "ratio_cases_per_s": round(one["seconds"] / many["seconds"], 2),
           "answers_equal": f"{same}/{len(one['answers'])}",
           "scores": {k: (one[k], many[k]) for k in ("reliability", "locality", "accuracy") if k in one}}
    if extra is not None:
        agree = sum(a == b for a, b in zip(many["answers"], extra["answers"]))
        row["bfloat16"] = {**figures(extra), "ratio_vs_float32_batched": round(many["seconds"] / extra["seconds"], 2),
                           "answers_equal_to_float32": f"{agree}/{len(many['answers'])}"}
    return row


def print_row(row: dict, batch_size: int) -> None:
    one, many = row["one_at_a_time"], row["batched"]
    print(f"\n{row['workload']}: {one['cases']} cases")
    print("| run | seconds | cases/s | tokens/s | generated tokens |\n|---|---|---|---|---|")
    print(f"| one at a time | {one['seconds']} | {one['cases_per_s']} | {one['tokens_per_s']} | {one['tokens']} |")
    print(f"| batched ({batch_size}) | {many['seconds']} | {many['cases_per_s']} | {many['tokens_per_s']} | {many['tokens']} |")
    if "bfloat16" in row:
        b = row["bfloat16"]
        print(f"| batched, bfloat16 | {b['seconds']} | {b['cases_per_s']} | {b['tokens_per_s']} | {b['tokens']} |")
    print(f"ratio (cases/s, batched / one at a time): {row['ratio_cases_per_s']}x; "
          f"answers, routes and scores equal: {row['answers_equal']}; scores (one, batched): {row['scores']}")
    if "bfloat16" in row:
        print(f"bfloat16: {row['bfloat16']['ratio_vs_float32_batched']}x float32 batched; "
              f"answers equal to float32: {row['bfloat16']['answers_equal_to_float32']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-1.5b")
    parser.add_argument("--prompts", type=int, default=16, help="short chat questions (0: skip)")
    parser.add_argument("--knowedit-cases", type=int, default=16, help="KnowEdit wiki_counterfact cases (0: skip)")
    parser.add_argument("--mquake-cases", type=int, default=16, help="MQuAKE-hard cases (0: skip)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows decoded together (default: the library's)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="bfloat16: also run batched with bfloat16 weights and compare with float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--results", type=Path, default=Path("bench/results/throughput.json"))
    args = parser.parse_args()

    import torch

    from memedit.eval.knowedit import load_knowedit
    from memedit.eval.mquake import load_mquake
    from memedit.models import DEFAULT_BATCH_SIZE, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    batch_size = args.batch_size or DEFAULT_BATCH_SIZE
    lm = load_model(args.model, device=args.device)
    print(f"{args.model} on {args.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"batch size {batch_size}", file=sys.stderr)
    # warm up what both runs share (the embedder, the detector's head, the model's first call)
    from memedit.embeddings import get_embedder
    from memedit.retrievers.detector import load_classifier

    load_classifier("edit", embedder=get_embedder())
    lm.generate("Hello", max_new_tokens=2)
    rows = []
    workloads = []
    if args.prompts:
        workloads.append(("chat questions, generate_many", lambda model, b: prompts_run(model, args.prompts, b)))
    if args.knowedit_cases:
        cases = load_knowedit(data_dir() / "knowedit" / "wiki_counterfact" / "train_cf.json", limit=args.knowedit_cases)
        workloads.append(("KnowEdit wiki_counterfact, SERAC", lambda model, b: knowedit_run(model, cases, b)))
    if args.mquake_cases:
        hard = load_mquake(data_dir() / "mquake-hard" / "MQuAKE-hard.json")
        workloads.append(("MQuAKE-hard, PokeMQA k=1", lambda model, b: mquake_run(model, hard, args.mquake_cases, b)))
    for name, run in workloads:
        print(f"{name}: one at a time ...", file=sys.stderr)
        one = run(lm, 1)
        print(f"{name}: batched ...", file=sys.stderr)
        many = run(lm, batch_size)
        extra = None
        if args.dtype == "bfloat16":
            lm.model.to(torch.bfloat16)
            lm.weights_changed()
            try:
                print(f"{name}: batched, bfloat16 ...", file=sys.stderr)
                extra = run(lm, batch_size)
            finally:
                lm.model.to(torch.float32)
                lm.weights_changed()
        rows.append(compare(name, one, many, extra))
        print_row(rows[-1], batch_size)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "device": args.device, "threads": torch.get_num_threads(), "batch_size": batch_size,
            "command": "python " + " ".join(sys.argv)}
    args.results.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
