"""``memedit eval ...``: run an evaluation from the command line and write its report."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from .runner import SCORINGS


def add_eval_parser(commands: Any) -> None:
    """Register ``memedit eval knowedit`` on the CLI's subcommands."""
    ev = commands.add_parser("eval", help="evaluate a router on a benchmark and write a report")
    benches = ev.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    kn = benches.add_parser("knowedit", help="KnowEdit JSON (ZsRE, wiki_counterfact) or our probe JSONL",
                            description="Every probe goes through retrieval and the router's scope check, with all "
                                        "edits of the batch in a fresh memory.")
    kn.add_argument("--data", required=True, help="KnowEdit .json file, or a .jsonl of edits with probes")
    kn.add_argument("--router", choices=["ike", "serac"], default="serac")
    kn.add_argument("--model", default="smollm2-135m", help="packaged name (smollm2-135m, qwen2.5-1.5b) or a local path")
    kn.add_argument("--limit", type=int, help="evaluate only the first N cases")
    kn.add_argument("--batch", type=int, help="cases sharing one memory (default: all of them)")
    kn.add_argument("--scoring", choices=[*SCORINGS, "both"], default="both")
    kn.add_argument("--scope", choices=["embedding", "cross-encoder"], default="embedding", help="SERAC scope classifier")
    kn.add_argument("--scope-path", help="folder of a trained cross-encoder (default: the one bench/scope.py trains)")
    kn.add_argument("-k", type=int, default=3, help="edits retrieved per question (default 3)")
    kn.add_argument("--out", required=True, help="folder for summary.json, cases.jsonl and report.md")
    kn.add_argument("--threads", type=int, help="CPU threads for the model (default: torch's choice; use 1 per run "
                                                "when running several evaluations at once)")
    kn.add_argument("--no-progress", action="store_true")


def cmd_eval(args: argparse.Namespace) -> int:
    from memedit.edited_model import make_router
    from memedit.models import load_model

    from .knowedit import detect_dataset, load_knowedit, load_probe_jsonl
    from .report import write_report
    from .runner import evaluate

    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.data.endswith(".jsonl"):
        cases, dataset = load_probe_jsonl(args.data, limit=args.limit), "jsonl"
    else:
        dataset = detect_dataset(args.data)
        cases = load_knowedit(args.data, limit=args.limit, dataset=dataset)
    model = load_model(args.model)
    scope = None
    if args.router == "serac":
        from memedit.embeddings import get_embedder
        from memedit.retrievers.serac import load_scope
        scope = load_scope(args.scope, embedder=get_embedder(), path=args.scope_path)

    def router_for(memory):
        options: dict[str, Any] = {"k": args.k} if scope is None else {"k": args.k, "scope": scope}
        return make_router(args.router, model, memory, **options)

    scorings = SCORINGS if args.scoring == "both" else (args.scoring,)
    started = time.time()
    summary, rows = evaluate(cases, router_for, scorings=scorings, batch_size=args.batch, progress=not args.no_progress)
    meta = {"benchmark": "knowedit", "dataset": dataset, "data": args.data, "model": args.model, "router": args.router,
            "scope": args.scope if args.router == "serac" else None, "k": args.k, "cases": len(cases),
            "batch": args.batch or len(cases), "scoring": ", ".join(scorings), "seconds": round(time.time() - started, 1),
            "command": "memedit " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    paths = write_report(args.out, summary, meta, rows)
    print(paths["report"].read_text())
    return 0
