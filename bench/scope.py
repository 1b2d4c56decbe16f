"""Scope detectors side by side: the shipped edit-aware detector against today's cosine and cross-encoder.

Run it from the repository root:

    python bench/scope.py              # trains the cross-encoder once (~15 min on 2 cores), then evaluates
    python bench/scope.py --reuse      # the cross-encoder already in --out (or skip it: --no-cross-encoder)

Two measurements, every detector in the same run:

1. **KnowEdit pairs** (cases 0-199 of ZsRE ``ZsRE-test-all.json`` and WikiData_counterfact
   ``train_cf.json``, which training never reads): an edit's reliability, generality and
   portability prompts are in scope of it; its locality prompts (same subject, another
   relation), the same relation about another subject and random other prompts are out
   (``memedit.retrievers.scope_pairs.scope_pairs``). Precision, recall and F1, and the share
   called in scope per pair kind.
2. **People's wordings**: edits about invented entities, questions written as a person
   types them, the same entities' other relations and famous entities; all edits of a file
   in one memory, every question through ``ScopeDetector.decide`` as a router asks it.
   Recall (the right edit), wrong edit, missed, false hits (and apart: those on questions
   in a group with edits, most often the same entities asked something else, and those in a
   group without edits), and the detector's cost per question (and, each question decided
   again with its vectors cached, the search and verdicts alone). Nine files by default:
   ``bench/data/natural_scope_holdout.jsonl`` (the bench
   set: no test reads it, nothing trains on it; the mistakes of its odd-numbered half were
   read while developing, never those of the even-numbered half),
   ``bench/data/natural_scope_fresh.jsonl`` (written in the fifteenth round by a helper that
   saw no other data; its figures chose between two heads; two of its false hits were read in
   the nineteenth round),
   ``bench/data/natural_scope_fresh2.jsonl`` (written the same way in the sixteenth round,
   with more questions about the same entities' other relations; its figures chose the
   head shipped then, and its false hits were read after that choice),
   ``bench/data/natural_scope_fresh3.jsonl`` (written the same way in the seventeenth round,
   asked for neighbouring relations by kind, from the same list that gave that round's new
   template relations, so it favours them; its figures made that round's choices),
   ``bench/data/natural_scope_fresh4.jsonl`` (written the same way in the eighteenth round,
   its prompt naming no relation; its figures made that round's choices, each candidate run
   on it once), ``bench/data/natural_scope_fresh5.jsonl`` (written the same way in the
   eighteenth round, half of its edits free text, to confirm or refute that round's change
   to free text; read after), ``bench/data/natural_scope_fresh6.jsonl`` (written the same way
   in the nineteenth round, half of its in-scope questions yes/no ones, many naming another
   value than the stored one; it refuted that round's candidate, whose mistakes were read after),
   ``bench/data/natural_scope_fresh7.jsonl`` (written the same way in the same round, for a
   second candidate: more yes/no questions naming another value, and yes/no questions about
   the same entity naming a value of another relation; it refuted that one too)
   and ``retrievers/data/scope_questions.jsonl`` (the earlier bench set, whose mistakes
   were read while developing; now training data of the shipped head, so its figures are
   training figures).

The cosine classifier gets its F1-max threshold on training pairs (cases 200-799); the
cross-encoder is fine-tuned on them (saved in ``--out``); the edit detector is the head and
relation check shipped in ``retrievers/data`` (``memedit scope train`` rebuilds both; a
``--compare-head`` folder without a check measures its head alone; ``--check-apart`` adds the
shipped detector with its relation check in an encoder pass of its own, as it ran before the
question and its check pairs shared one, for the cost side by side). Figures are printed
and written as JSON to ``--results`` (default bench/results/scope.json).
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

from memedit.embeddings import get_embedder
from memedit.eval.knowedit import load_knowedit
from memedit.eval.scope_eval import evaluate_scope, false_hit_split, load_scope_questions
from memedit.retrievers.detector import HEAD_DIR, EditScope, StatementScope
from memedit.retrievers.entities import name_tokens
from memedit.retrievers.relation_check import RelationCheck
from memedit.retrievers.scope import DEFAULT_MAX_LENGTH, CrossEncoderScope, EmbeddingScope, ScopePair
from memedit.model_files import data_dir
from memedit.retrievers.scope_pairs import calibrate, scope_metrics, scope_pairs
from memedit.retrievers.scope_training import KNOWEDIT_FILES, train_cross_encoder
from memedit.retrievers.scope import default_scope_path

EVAL_CASES = 200
KINDS = ("reliability", "generality", "portability", "locality", "same_relation", "unrelated")
NATURAL = [Path(__file__).parent / "data" / "natural_scope_holdout.jsonl",
           Path(__file__).parent / "data" / "natural_scope_fresh.jsonl",
           Path(__file__).parent / "data" / "natural_scope_fresh2.jsonl",
           Path(__file__).parent / "data" / "natural_scope_fresh3.jsonl",
           Path(__file__).parent / "data" / "natural_scope_fresh4.jsonl",
           Path(__file__).parent / "data" / "natural_scope_fresh5.jsonl",
           Path(__file__).parent / "data" / "natural_scope_fresh6.jsonl",
           Path(__file__).parent / "data" / "natural_scope_fresh7.jsonl",
           Path(__file__).resolve().parent.parent / "retrievers" / "data" / "scope_questions.jsonl"]


def load_pairs(data: Path, train_limit: int, seed: int) -> tuple[list[ScopePair], dict[str, list[ScopePair]]]:
    """(training pairs of all data sets, evaluation pairs per data set)."""
    train: list[ScopePair] = []
    evaluation: dict[str, list[ScopePair]] = {}
    for name, relative in KNOWEDIT_FILES.items():
        cases = load_knowedit(data / relative, limit=EVAL_CASES + train_limit, dataset=name)
        if len(cases) <= EVAL_CASES:
            raise SystemExit(f"{data / relative} has only {len(cases)} cases; need more than {EVAL_CASES}")
        evaluation[name] = scope_pairs(cases[:EVAL_CASES], seed=seed)
        train += scope_pairs(cases[EVAL_CASES:], seed=seed)
    return train, evaluation


def evaluate_pairs(classifier, evaluation: dict[str, list[ScopePair]]) -> dict:
    """Precision/recall/F1 per data set and overall, and the share called in scope per pair kind."""
    every = [p for pairs in evaluation.values() for p in pairs]
    scores = np.asarray(classifier.pair_scores(every))
    labels = np.array([p.label for p in every])
    names = np.array([name for name, pairs in evaluation.items() for _ in pairs])
    kinds = np.array([p.kind for p in every])
    result = {name: scope_metrics(scores[names == name], labels[names == name], classifier.threshold) for name in evaluation}
    result["all"] = scope_metrics(scores, labels, classifier.threshold)
    called = scores >= classifier.threshold
    result["by_kind"] = {kind: {"in_scope_rate": float(called[kinds == kind].mean()), "n": int((kinds == kind).sum())}
                         for kind in KINDS if (kinds == kind).any()}
    unnamed = np.array([p.label == 1 and not shares_a_word(p.question, getattr(p.edit, "subject", None)) for p in every])
    positives, found = int((labels == 1).sum()), int(called[unnamed].sum())
    ceiling = (positives - int(unnamed.sum()) + found) / positives if positives else 0.0  # every named one found too
    result["unnamed"] = {"n": int(unnamed.sum()), "found": found, "positives": positives,
                         "f1_if_every_named_pair_were_found": 2 * ceiling / (1 + ceiling) if ceiling else 0.0}
    return result


def shares_a_word(question: str, subject: str | None) -> bool:
    """Whether the question holds a word (three letters or more, folded as names are matched:
    :func:`~memedit.retrievers.entities.name_tokens`) of the edit's subject. KnowEdit's portability prompts sometimes name the subject only by an
    alias that world knowledge alone links to it ("What is WRAY 16-147?" for the Southern
    Crab Nebula, "the author of <a paper's title>"); no detector reading the memory finds those."""
    words = lambda text: {w for w in name_tokens(text) if len(w) >= 3}  # noqa: E731
    return subject is None or bool(words(subject) & words(question))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=data_dir(), help="folder with knowedit/ (default $MEMEDIT_DATA)")
    parser.add_argument("--natural", type=Path, nargs="+", default=NATURAL, help="scope-questions JSONL files of people's wordings")
    parser.add_argument("--train-limit", type=int, default=600, help="training cases per data set (from case 200 on)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help=f"the cross-encoder's folder (default {default_scope_path()})")
    parser.add_argument("--reuse", action="store_true", help="load the cross-encoder from --out instead of training it")
    parser.add_argument("--no-cross-encoder", action="store_true", help="leave the cross-encoder out")
    parser.add_argument("--head", type=Path, default=None, help="a head folder from 'memedit scope train' (default: the shipped one)")
    parser.add_argument("--compare-head", type=Path, action="append", default=[],
                        help="another head folder to measure beside it, as 'edit (FOLDER)' (repeatable)")
    parser.add_argument("--check-apart", action="store_true",
                        help="also measure the shipped detector with the relation check in its own encoder pass, as 'edit, check apart'")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results", type=Path, default=Path("bench/results/scope.json"))
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = (args.out or default_scope_path()).expanduser()
    started = time.perf_counter()
    train, evaluation = load_pairs(args.data, args.train_limit, args.seed)
    embedder = get_embedder()
    classifiers = {"edit": EditScope(embedder, folder=args.head)}
    if args.check_apart:  # its own check object: no score cached by the other
        classifiers["edit, check apart"] = EditScope(embedder, folder=args.head, one_pass=False,
                                                     check=RelationCheck.load(args.head or HEAD_DIR))
    for folder in args.compare_head:
        classifiers[f"edit ({folder})"] = EditScope(embedder, folder=folder)
    cosine = EmbeddingScope(embedder)
    calibrate(cosine, train)
    classifiers["embedding"] = StatementScope(cosine)
    if not args.no_cross_encoder:
        if args.reuse:
            cross = CrossEncoderScope.load(out)
        else:
            cross = train_cross_encoder(train, out, epochs=2, batch_size=32, lr=3e-5, seed=args.seed,
                                        max_length=DEFAULT_MAX_LENGTH)
        classifiers["cross-encoder"] = StatementScope(cross)
    wordings = {path.name: load_scope_questions(path) for path in args.natural}
    results: dict = {"eval_cases_per_set": EVAL_CASES, "eval_pairs": {k: len(v) for k, v in evaluation.items()},
                     "natural": [str(p) for p in args.natural], "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                     "detectors": {}}
    for name, classifier in classifiers.items():
        t = time.perf_counter()
        pairs = evaluate_pairs(classifier, evaluation)
        natural = {file: evaluate_scope(edits, questions, classifier, k=5, embedder=embedder)
                   for file, (edits, questions) in wordings.items()}
        results["detectors"][name] = {"threshold": classifier.threshold, "knowedit": pairs, "natural": natural,
                                      "seconds": round(time.perf_counter() - t, 1)}
        print(f"{name}: done in {results['detectors'][name]['seconds']} s", file=sys.stderr)
    results["total_s"] = round(time.perf_counter() - started, 1)

    print("\nKnowEdit evaluation pairs (cases 0-199 of both sets)")
    print("| detector | threshold | precision | recall | F1 | locality in scope | same relation, other subject | unrelated |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results["detectors"].items():
        a, k = r["knowedit"]["all"], r["knowedit"]["by_kind"]
        print(f"| {name} | {r['threshold']:.3f} | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | "
              f"{100 * k['locality']['in_scope_rate']:.1f} % | {100 * k['same_relation']['in_scope_rate']:.1f} % | "
              f"{100 * k['unrelated']['in_scope_rate']:.1f} % |")
    u = next(iter(results["detectors"].values()))["knowedit"]["unnamed"]
    print(f"\nIn-scope pairs whose question shares no word with the edit's subject (an alias only world knowledge "
          f"links): {u['n']} of {u['positives']}; found: " + ", ".join(f"{name} {r['knowedit']['unnamed']['found']}"
                                                           for name, r in results["detectors"].items()))
    print("F1 if each detector also found every in-scope pair that names the subject, with no false hit: " +
          ", ".join(f"{name} {r['knowedit']['unnamed']['f1_if_every_named_pair_were_found']:.3f}"
                    for name, r in results["detectors"].items()))
    for file in wordings:
        n = next(iter(results["detectors"].values()))["natural"][file]
        print(f"\nPeople's wordings ({file}: {n['edits']} edits in one memory, {n['edit_questions']} questions "
              f"about an edit, {n['other_questions']} others)")
        print("| detector | right edit | wrong edit | missed | false hits | ms on top of retrieval, p50 / p95 |")
        print("|---|---|---|---|---|---|")
        for name, r in results["detectors"].items():
            m = r["natural"][file]
            print(f"| {name} | {100 * m['recall']:.1f} % | {100 * m['wrong_edit']:.1f} % | {100 * m['missed']:.1f} % | "
                  f"{100 * m['false_hit_rate']:.1f} % | {m['detector_ms_p50']:.1f} / {m['detector_ms_p95']:.1f} |")
        print("False hits: " + "; ".join(f"{name} {false_hit_split(r['natural'][file])}" for name, r in results["detectors"].items()))
        print("Each question decided again (the edit detector's vectors and check scores cached; search and verdicts), p50: " +
              ", ".join(f"{name} {r['natural'][file]['decide_again_ms_p50']:.1f} ms" for name, r in results["detectors"].items()))
    print(f"\ntotal {results['total_s']} s")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"figures written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
