"""Two-edit chains about fictional entities: PokeMQA against the graph walk, side by side.

Each chain is two triple edits where the second edit's subject is the first edit's target
(A works for B; B is based in C), and one question that needs both ("where is the club A
works for based?"). The entities are made up, so the model cannot know any hop: the answer
must come from the memory, through both edits. Both routers get the same memory (all
chains' edits in one namespace), the same model, the same questions, batched the same way.
Printed per router: chains answered (the final answer contains the second edit's target),
chains whose walk reached the intermediate entity, model calls and seconds per question.

    python bench/chains.py --model qwen2.5-1.5b --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

# Each chain: two edits as [subject, cloze prompt, target] and the question that needs both.
CHAINS = [(c["first"], c["second"], c["question"])
          for c in json.loads((Path(__file__).parent / "data" / "chains.json").read_text(encoding="utf-8"))]
ROUTERS = ("pokemqa", "graph")


def run(router_name: str, lm, memory, batch_size: int) -> dict:
    from memedit.edited_model import make_router
    from memedit.eval.metrics import answer_matches
    from memedit.retrievers.steps import counted, run_many

    router = make_router(router_name, lm, memory)
    calls = [[0] for _ in CHAINS]
    started = time.perf_counter()
    answers = run_many(lm, [counted(router.answer_steps(q), c) for (_, _, q), c in zip(CHAINS, calls)], batch_size)
    seconds = time.perf_counter() - started
    rows = []
    for (first, second, question), answer, n in zip(CHAINS, answers, calls):
        chain = next((s["answers"] for s in answer.trace if s["step"] == "chain_answers"), [])
        rows.append({"question": question, "answer": answer.text, "chain": chain, "calls": n[0],
                     "correct": answer_matches(answer.text, [second[2]]),
                     "first_hop": any(answer_matches(a, [first[2]]) for a in chain)})
    return {"router": router_name, "rows": rows, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-1.5b")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--results", default="bench/results/chains.json")
    args = parser.parse_args()
    import torch

    from memedit import Memory
    from memedit.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        memory = Memory(str(Path(tmp) / "chains.db"), namespace="chains")
        for first, second, _ in CHAINS:
            for subject, prompt, target in (first, second):
                memory.add(subject=subject, prompt=prompt, target=target)
        for name in ROUTERS:
            results.append(run(name, lm, memory, args.batch_size))
        memory.close()
    n = len(CHAINS)
    print(f"{args.model}: {n} two-edit chains about fictional entities, all {2 * n} edits in one memory, "
          f"batch size {args.batch_size}")
    print("| router | chains answered | first hop reached | model calls / question | s / question |")
    print("|---|---|---|---|---|")
    for r in results:
        rows = r["rows"]
        print(f"| {r['router']} | {sum(x['correct'] for x in rows)}/{n} | {sum(x['first_hop'] for x in rows)}/{n} | "
              f"{sum(x['calls'] for x in rows) / n:.2f} | {r['seconds'] / n:.1f} |")
    for r in results:
        for x in r["rows"]:
            print(f"{r['router']:8} {'ok ' if x['correct'] else 'no '} {x['question']} -> {x['answer']!r} chain={x['chain']}")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"model": args.model, "results": results}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
