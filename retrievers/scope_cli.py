"""``memedit scope train`` and ``memedit scope eval``: the scope detector's head, on your own data too."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .detector import HEAD_DIR


def add_scope_parser(commands: Any) -> None:
    scope = commands.add_parser("scope", help="train or evaluate the scope detector (which edit a question falls under)")
    verbs = scope.add_subparsers(dest="scope_command", required=True, metavar="VERB")
    train = verbs.add_parser("train", help="fit the detector's head on KnowEdit cases 200-799 (and your own questions)",
                             description="Fits the head on KnowEdit cases 200-799 of ZsRE and WikiData_counterfact "
                                         "($MEMEDIT_DATA/knowedit), plus --extra files of your own labelled questions; "
                                         "a few minutes on 2 cores.")
    train.add_argument("--out", required=True, help=f"folder for the head (the shipped one is {HEAD_DIR})")
    train.add_argument("--extra", action="append", default=[], help="a scope-questions JSONL of your own (repeatable)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-check", action="store_true", help="the head alone, without the relation check (half the time)")
    train.add_argument("--no-progress", action="store_true")
    ev = verbs.add_parser("eval", help="recall and false hits of a detector on a scope-questions JSONL file",
                          description="Stores every edit of the file in a fresh memory and asks the detector each "
                                      "question; see memedit.eval.scope_eval for the format.")
    ev.add_argument("--data", required=True, help="JSONL of {id, edits, questions} groups")
    ev.add_argument("--scope", choices=["edit", "embedding", "cross-encoder"], default="edit")
    ev.add_argument("--scope-path", help="folder of a head from 'memedit scope train' (edit) or of a cross-encoder")
    ev.add_argument("-k", type=int, default=5, help="nearest edits considered per question (default 5)")


def cmd_scope(args: argparse.Namespace) -> int:
    if args.scope_command == "train":
        from .scope_training import default_training_pairs, question_pairs, train

        pairs = default_training_pairs(args.seed)
        for path in args.extra:
            pairs += question_pairs(path)
        scope = train(args.out, pairs, seed=args.seed, progress=not args.no_progress, sources=args.extra,
                      check=not args.no_check)
        meta = scope.meta
        print(f"head written to {args.out}: {meta['train_pairs']} training pairs, threshold {meta['threshold']:.3f}, "
              f"held-out precision {meta['calibration']['precision']:.3f} recall {meta['calibration']['recall']:.3f}, "
              f"{meta['seconds']} s")
        if scope.check is not None:
            fit = scope.check.meta["calibration"]
            print(f"relation check written beside it: threshold {scope.check.threshold:.3f}, held-out precision "
                  f"{fit['precision']:.3f} recall {fit['recall']:.3f}, {scope.check.meta['seconds']} s")
        print(f"use it with: EditedModel(model, memory, router='serac', scope=EditScope(folder={str(args.out)!r})) "
              f"or --scope-path {args.out}")
        return 0
    from memedit.embeddings import get_embedder
    from memedit.eval.scope_eval import evaluate_scope, false_hit_split, load_scope_questions

    from .detector import load_classifier

    edits, questions = load_scope_questions(args.data)
    classifier = load_classifier(args.scope, embedder=get_embedder(), path=args.scope_path)
    result = evaluate_scope(edits, questions, classifier, k=args.k)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['detector']} (threshold {result['threshold']:.3f}) on {Path(args.data).name}: {result['edits']} edits in memory")
    print(f"  {result['edit_questions']} questions about an edit: right {100 * result['recall']:.1f} %, "
          f"wrong edit {100 * result['wrong_edit']:.1f} %, missed {100 * result['missed']:.1f} %")
    print(f"  {result['other_questions']} other questions: false hits {100 * result['false_hit_rate']:.1f} % "
          f"({false_hit_split(result)})")
    print(f"  detector {result['detector_ms_p50']:.1f} ms p50 ({result['detector_ms_p95']:.1f} ms p95) on top of "
          f"embedding + search ({result['retrieval_ms_p50']:.1f} ms p50)")
    for kind, rows in result["mistakes"].items():
        for row in rows[:3]:
            print(f"  {kind}: {row['question']!r} -> {row['got']!r} (expected {row['expected']!r})", file=sys.stderr)
    return 0
