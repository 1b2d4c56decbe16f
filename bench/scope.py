"""Scope classifier benchmark: embedding similarity vs. the MiniLM cross-encoder on KnowEdit.

Run it from the repository root:

    python bench/scope.py                      # train on 600 + 600 cases, ~5-10 min on 2 cores
    python bench/scope.py --train-limit 100    # a quick run
    python bench/scope.py --reuse              # evaluate the cross-encoder already in --out

Cases 0-199 of each data set (ZsRE ``ZsRE-test-all.json``, WikiData_counterfact
``train_cf.json``) are the evaluation cases and are never trained on; training uses cases
200 onwards (at most ``--train-limit`` per data set). Pairs come from
``memedit.retrievers.scope.scope_pairs``: an edit's reliability, generality and
portability prompts are in scope of its statement; its locality prompts (hard
negatives, same subject) and two other cases' prompts (easy negatives) are out.

1. The embedding classifier (MiniLM cosine) gets the F1-max threshold on the training pairs.
2. The cross-encoder is fine-tuned from the packaged MiniLM on the training pairs (its
   threshold is the F1-max one on a held-out 10% of their statements) and saved in
   ``--out`` (default ``$MEMEDIT_CACHE/scope/minilm-knowedit`` or
   ``~/.cache/memedit/scope/minilm-knowedit``).
3. Both are scored on the evaluation pairs: precision, recall and F1 per data set and
   overall, and the share of pairs called in scope per pair kind (for locality and
   same-relation and unrelated pairs that is the false-positive rate).

Figures are printed and written as JSON to ``--results`` (default bench/results/scope.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from memedit.eval.knowedit import load_knowedit
from memedit.retrievers.serac import default_scope_path
from memedit.retrievers.scope import (DEFAULT_MAX_LENGTH, CrossEncoderScope, EmbeddingScope, ScopePair,
                                      scope_metrics, scope_pairs)

DATA = Path("/work/shared/data/knowedit")
FILES = {"zsre": "ZsRE/ZsRE-test-all.json", "wiki_counterfact": "wiki_counterfact/train_cf.json"}
EVAL_CASES = 200
KINDS = ("reliability", "generality", "portability", "locality", "same_relation", "unrelated")


def load_pairs(data: Path, train_limit: int, seed: int) -> tuple[list[ScopePair], dict[str, list[ScopePair]]]:
    """(training pairs of all data sets, evaluation pairs per data set)."""
    train: list[ScopePair] = []
    evaluation: dict[str, list[ScopePair]] = {}
    for name, relative in FILES.items():
        cases = load_knowedit(data / relative, limit=EVAL_CASES + train_limit, dataset=name)
        if len(cases) <= EVAL_CASES:
            raise SystemExit(f"{data / relative} has only {len(cases)} cases; need more than {EVAL_CASES}")
        evaluation[name] = scope_pairs(cases[:EVAL_CASES], seed=seed)
        train += scope_pairs(cases[EVAL_CASES:], seed=seed)
        print(f"{name}: {len(cases) - EVAL_CASES} training cases, {EVAL_CASES} evaluation cases", file=sys.stderr)
    return train, evaluation


def evaluate(classifier, evaluation: dict[str, list[ScopePair]]) -> dict:
    """Precision/recall/F1 per data set and overall, and the share called in scope per pair kind."""
    every = [p for pairs in evaluation.values() for p in pairs]
    scores = classifier.pair_scores(every)  # scored once; the splits below index into it
    labels = np.array([p.label for p in every])
    names = np.array([name for name, pairs in evaluation.items() for _ in pairs])
    kinds = np.array([p.kind for p in every])
    result = {name: scope_metrics(scores[names == name], labels[names == name], classifier.threshold) for name in evaluation}
    result["all"] = scope_metrics(scores, labels, classifier.threshold)
    called = scores >= classifier.threshold
    result["by_kind"] = {kind: {"in_scope_rate": float(called[kinds == kind].mean()), "n": int((kinds == kind).sum())}
                         for kind in KINDS if (kinds == kind).any()}
    return result


def print_table(results: dict) -> None:
    names = [*FILES, "all"]
    print(f"\n{'classifier':<14} {'data set':<17} {'precision':>9} {'recall':>7} {'F1':>6} {'n':>6} {'threshold':>9}")
    for label in ("embedding", "cross_encoder"):
        for name in names:
            r = results[label][name]
            print(f"{label:<14} {name:<17} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['f1']:>6.3f} {r['n']:>6} {r['threshold']:>9.3f}")
    print(f"\nshare called in scope, by pair kind (all evaluation pairs)")
    print(f"{'classifier':<14} " + " ".join(f"{k:>12}" for k in KINDS))
    for label in ("embedding", "cross_encoder"):
        rates = results[label]["by_kind"]
        print(f"{label:<14} " + " ".join(f"{rates[k]['in_scope_rate']:>12.3f}" if k in rates else f"{'-':>12}" for k in KINDS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with ZsRE/ and wiki_counterfact/")
    parser.add_argument("--train-limit", type=int, default=600, help="training cases per data set (from case 200 on)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per (question, statement) pair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help=f"where the trained cross-encoder goes (default {default_scope_path()})")
    parser.add_argument("--reuse", action="store_true", help="load the cross-encoder from --out instead of training it")
    parser.add_argument("--results", type=Path, default=Path("bench/results/scope.json"), help="where to write the figures as JSON")
    args = parser.parse_args(argv)
    out = (args.out or default_scope_path()).expanduser()

    started, cpu_started = time.perf_counter(), time.process_time()
    train, evaluation = load_pairs(args.data, args.train_limit, args.seed)
    results: dict = {"train_cases_per_set": args.train_limit, "eval_cases_per_set": EVAL_CASES, "seed": args.seed,
                     "train_pairs": len(train), "eval_pairs": {k: len(v) for k, v in evaluation.items()},
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}

    t = time.perf_counter()
    embedding = EmbeddingScope()
    embedding.calibrate(train)
    results["embedding_calibrate_s"] = round(time.perf_counter() - t, 1)
    print(f"embedding threshold {embedding.threshold:.3f} (F1-max on {len(train)} training pairs, "
          f"{results['embedding_calibrate_s']} s)", file=sys.stderr)

    t, cpu = time.perf_counter(), time.process_time()
    if args.reuse:
        cross = CrossEncoderScope.load(out)
    else:
        cross = CrossEncoderScope.train(train, out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                        seed=args.seed, max_length=args.max_length)
    results["cross_encoder_train_s"] = round(time.perf_counter() - t, 1)
    results["cross_encoder_train_cpu_s"] = round(time.process_time() - cpu, 1)
    results["cross_encoder_meta"] = cross.meta
    results["cross_encoder_folder"] = str(out)

    t = time.perf_counter()
    results["embedding"] = evaluate(embedding, evaluation)
    results["cross_encoder"] = evaluate(cross, evaluation)
    results["evaluate_s"] = round(time.perf_counter() - t, 1)
    results["total_s"] = round(time.perf_counter() - started, 1)
    results["total_cpu_s"] = round(time.process_time() - cpu_started, 1)
    results["load_avg_end"] = os.getloadavg()[0]

    print_table(results)
    verb = "loaded" if args.reuse else "trained"
    meta = cross.meta
    print(f"\ncross-encoder {verb} in {results['cross_encoder_train_s']} s ({meta.get('train_pairs')} training pairs, "
          f"{meta.get('calibration_pairs')} held out for its threshold, {meta.get('epochs')} epochs) "
          f"-> {out}; total {results['total_s']} s wall, {results['total_cpu_s']} s CPU; "
          f"load average {results['load_avg_end']:.2f} at end")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"figures written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
