"""``memedit eval ...``: run an evaluation from the command line and write its report."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from memedit.models import DEFAULT_BATCH_SIZE, DTYPES, check_batch_size

from .runner import SCORINGS

CHAIN_ROUTERS = ("mello", "pokemqa", "graph")  # the multi-hop routers: a loop limit and a scope detector


def add_eval_parser(commands: Any) -> None:
    """Register ``memedit eval knowedit`` and ``memedit eval mquake`` on the CLI's subcommands."""
    ev = commands.add_parser("eval", help="evaluate a router on a benchmark and write a report")
    benches = ev.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    kn = benches.add_parser("knowedit", help="KnowEdit JSON (ZsRE, wiki_counterfact) or our probe JSONL",
                            description="Every probe goes through retrieval and the router's scope check, with all "
                                        "edits of the batch in a fresh memory.")
    kn.add_argument("--data", required=True, help="KnowEdit .json file, or a .jsonl of edits with probes")
    kn.add_argument("--dataset", choices=["zsre", "wiki_counterfact"],
                    help="the KnowEdit data set, when the file name does not say (default: from the name)")
    kn.add_argument("--router", choices=["ike", "serac"], default="serac")
    kn.add_argument("--model", default="smollm2-135m", help="packaged name (smollm2-135m, qwen2.5-1.5b) or a local path")
    kn.add_argument("--limit", type=int, help="evaluate only the first N cases")
    kn.add_argument("--batch", type=int, help="cases sharing one memory (default: all of them)")
    kn.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                    help=f"prompts decoded together (default {DEFAULT_BATCH_SIZE}; 1: one at a time; same answers either way)")
    kn.add_argument("--dtype", choices=DTYPES, default="float32", help="model weights (default float32)")
    kn.add_argument("--scoring", choices=[*SCORINGS, "both"], default="both")
    kn.add_argument("--scope", choices=["edit", "embedding", "cross-encoder"], default="edit",
                    help="the scope detector's classifier (default: edit, the shipped edit-aware one)")
    kn.add_argument("--scope-path", help="folder of a head from 'memedit scope train' (edit) or of a trained cross-encoder")
    kn.add_argument("-k", type=int, default=5, help="nearest edits considered per question (default 5)")
    kn.add_argument("--out", required=True, help="folder for summary.json, cases.jsonl and report.md")
    kn.add_argument("--threads", type=int, help="CPU threads for the model (default: torch's choice; use 1 per run "
                                                "when running several evaluations at once)")
    kn.add_argument("--no-progress", action="store_true")

    mq = benches.add_parser("mquake", help="MQuAKE multi-hop questions in the k-edited setting (resumable)",
                            description="Batches of k cases over the whole file; the memory holds all edits of a batch; "
                                        "every question goes through the router. A rerun with the same settings skips "
                                        "finished cases.")
    mq.add_argument("--data", required=True, help="MQuAKE JSON file (e.g. MQuAKE-hard.json)")
    mq.add_argument("--router", choices=["mello", "pokemqa", "graph", "ike"], default="pokemqa")
    mq.add_argument("--model", default="smollm2-135m", help="packaged name (smollm2-135m, qwen2.5-1.5b) or a local path")
    mq.add_argument("--k", nargs="+", default=["1"], help="cases per batch: numbers and/or 'all' (several: one run each)")
    mq.add_argument("--limit", type=int, help="ask only the first N cases (after --skip)")
    mq.add_argument("--skip", type=int, default=0,
                    help="leave out the first N cases, e.g. those a prompt was developed on (default 0)")
    mq.add_argument("--questions", type=int, choices=[1, 2, 3], default=1, help="questions asked per case (default 1)")
    mq.add_argument("--max-hops", type=int, default=5, help="loop limit of MeLLo and PokeMQA, longest walk of graph (default 5)")
    mq.add_argument("--detector", choices=["edit", "cross-encoder", "embedding"], default="edit",
                    help="the scope detector's classifier for PokeMQA, MeLLo and graph (default: edit, the shipped one)")
    mq.add_argument("--first-threshold", type=float,
                    help="PokeMQA's first-stage cosine cut (default: none for edit, 0.4 for the statement-only ones)")
    mq.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                    help=f"cases run together, their generations decoded as one batch (default {DEFAULT_BATCH_SIZE}; "
                         "1: one at a time; same answers either way)")
    mq.add_argument("--dtype", choices=DTYPES, default="float32", help="model weights (default float32)")
    mq.add_argument("--out", required=True, help="folder: one sub-folder per router and k, plus the plot and a table")
    mq.add_argument("--threads", type=int, help="CPU threads for the model")
    mq.add_argument("--no-progress", action="store_true")


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        check_batch_size(args.batch_size)
    except ValueError as error:
        raise ValueError(f"--batch-size: {error}") from None
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.benchmark == "mquake":
        return cmd_mquake(args)
    return cmd_knowedit(args)


def cmd_mquake(args: argparse.Namespace) -> int:
    from pathlib import Path

    from memedit.edited_model import make_router
    from memedit.models import load_model

    from .mquake import batch_size, load_mquake
    from .mquake_runner import evaluate_mquake
    from .plot import collect_summaries, plot_accuracy_vs_k

    cases = load_mquake(args.data)
    for k in args.k:
        batch_size(k, len(cases))  # a bad k fails before the model loads
    if args.max_hops < 1:
        raise ValueError(f"--max-hops must be 1 or more, got {args.max_hops}")
    model = load_model(args.model, dtype=args.dtype)
    options: dict[str, Any] = {}
    if args.router in CHAIN_ROUTERS:
        from memedit.embeddings import get_embedder
        from memedit.retrievers.detector import load_classifier
        options["max_hops"] = args.max_hops
        options["scope" if args.router == "mello" else "detector"] = load_classifier(args.detector, embedder=get_embedder())
    if args.router == "pokemqa":
        options["first_threshold"] = _first_threshold(args)
    root = Path(args.out)
    for k in args.k:
        settings = {"benchmark": "mquake", "data": args.data, "router": args.router, "model": args.model,
                    "max_hops": args.max_hops if args.router != "ike" else None,
                    "detector": args.detector if args.router in CHAIN_ROUTERS else None,
                    "first_threshold": _first_threshold(args) if args.router == "pokemqa" else None,
                    "dtype": args.dtype,
                    "command": "memedit " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
        out = root / f"{args.router}-{Path(args.model).name}-k{k}"
        print(f"{args.router}, k={k} -> {out}", file=sys.stderr)
        evaluate_mquake(cases, lambda memory: make_router(args.router, model, memory, **options), k, out,
                        limit=args.limit, questions=args.questions, settings=settings, progress=not args.no_progress,
                        batch_size=args.batch_size, skip=args.skip)
        print((out / "report.md").read_text())
    summaries = collect_summaries(root)
    plot = plot_accuracy_vs_k(summaries, root / "accuracy_vs_k.png")
    (root / "summary.md").write_text(mquake_table(summaries), encoding="utf-8")
    print(f"plot: {plot}\ntable: {root / 'summary.md'}")
    return 0


def _first_threshold(args: argparse.Namespace) -> float | None:
    from memedit.retrievers.pokemqa import FIRST_THRESHOLD

    if args.first_threshold is not None:
        return args.first_threshold
    return None if args.detector == "edit" else FIRST_THRESHOLD


def mquake_table(summaries: list[dict[str, Any]]) -> str:
    """One Markdown row per run under the output folder."""
    rows = ["| router | model | k | cases | accuracy | hop-wise | s/case | calls/case | failures |",
            "|---|---|---|---|---|---|---|---|---|"]
    for data in summaries:
        meta, s = data["meta"], data["summary"]
        failures = ", ".join(f"{name} {n}" for name, n in s["failures"].items()) or "–"
        rows.append(f"| {meta['router']} | {meta['model']} | {meta['k']} | {s['cases']} | {s['accuracy']} | "
                    f"{s['hop_accuracy']} | {s['seconds_per_case']} | {s.get('calls_per_case') or '–'} | {failures} |")
    return "\n".join(rows) + "\n"


def cmd_knowedit(args: argparse.Namespace) -> int:
    from memedit.edited_model import make_router
    from memedit.models import load_model

    from .knowedit import detect_dataset, load_knowedit, load_probe_jsonl
    from .report import write_report
    from .runner import evaluate

    if args.data.endswith(".jsonl"):
        cases, dataset = load_probe_jsonl(args.data, limit=args.limit), "jsonl"
    else:
        dataset = args.dataset or detect_dataset(args.data)
        cases = load_knowedit(args.data, limit=args.limit, dataset=dataset)
    model = load_model(args.model, dtype=args.dtype)
    from memedit.embeddings import get_embedder
    from memedit.retrievers.detector import load_classifier
    scope = load_classifier(args.scope, embedder=get_embedder(), path=args.scope_path)

    def router_for(memory):
        return make_router(args.router, model, memory, k=args.k, scope=scope)

    scorings = SCORINGS if args.scoring == "both" else (args.scoring,)
    started = time.time()
    summary, rows = evaluate(cases, router_for, scorings=scorings, batch_size=args.batch, progress=not args.no_progress,
                             generation_batch=args.batch_size)
    meta = {"benchmark": "knowedit", "dataset": dataset, "data": args.data, "model": args.model, "router": args.router,
            "scope": args.scope, "k": args.k, "cases": len(cases), "dtype": args.dtype, "batch_size": args.batch_size,
            "batch": args.batch or len(cases), "scoring": ", ".join(scorings), "seconds": round(time.time() - started, 1),
            "command": "memedit " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    paths = write_report(args.out, summary, meta, rows)
    print(paths["report"].read_text())
    return 0
