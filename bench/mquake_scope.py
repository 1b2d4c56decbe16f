"""The scope detector on MQuAKE-hard sub-questions: recall and false hits, detectors side by side.

Run it from the repository root (no language model is loaded; a few minutes on 2 cores):

    python bench/mquake_scope.py                 # the edit detector beside today's two, k = 1 and all
    python bench/mquake_scope.py --detector edit cross-encoder:0.4 --k all

A detector is ``edit`` (the default one: the nearest edits and those whose subject the
question names, judged by the edit-aware head) or ``NAME:CUT``, a statement-only
classifier (``cross-encoder`` or ``embedding``) behind a first-stage cosine cut, as
PokeMQA used them (``cross-encoder:0.4``, ``embedding:0.701``). For each k, the memory
holds the edits of each batch of k cases (k = all: all 1,716 edits of the file). The
detector (``ScopeDetector.decide``, as every router calls it) is asked:

- each case's gold single-hop questions after the edits (``new_single_hops``): every hop of
  MQuAKE-hard is edited, so the detector should return that hop's edit. Recall is the share
  for which it returns exactly that edit; ``wrong`` the share for which it returns another.
- each case's original single-hop questions 2-4 (``single_hops``: about the pre-edit
  entities, e.g. "Who is the director of The Beatles?"): no edit of the case is about them,
  so any hit is a false hit (another case may, rarely, edit the same fact; such questions
  are counted apart and left out).
- each case's multi-hop questions (``questions``: "What is the citizenship of the CEO of
  X?"), as a multi-hop router's sub-question sometimes asks two hops at once: they name the
  first hop's subject, so the detector should return the first hop's edit (``first hop``).

The detector was trained on KnowEdit, never on MQuAKE. Figures are printed and written as
JSON to ``--results`` (default bench/results/mquake_scope.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from memedit.eval.mquake import batches, load_mquake
from memedit.retrievers.detector import ScopeDetector, load_classifier

from memedit import Memory
from memedit.embeddings import get_embedder
from memedit.model_files import data_dir

DATA = data_dir() / "mquake-hard" / "MQuAKE-hard.json"


def measure(cases, k, classifier, first_threshold: float | None, folder: Path) -> dict:
    embedder = get_embedder()
    found = {"recall": 0, "wrong": 0, "missed": 0, "false_hit": 0, "quiet": 0, "edited_elsewhere": 0,
             "first_hop": 0, "compound_other": 0, "compound_none": 0}
    for number, group in enumerate(batches(cases, k)):
        with Memory(folder / f"k{k}-{number}.db", embedder=embedder) as memory:
            memory.add_many([e for c in group for e in c.edits])
            detector = ScopeDetector(memory, classifier, k=5, min_cosine=first_threshold)
            edited = {(e.subject.casefold(), e.relation) for c in group for e in c.edits}
            for case in group:
                for hop, index in zip(case.new_hops, case.edit_for_hop()):
                    hit = detector.decide(hop.question).best
                    if hit is None:
                        found["missed"] += 1
                    elif hit.statement == case.edits[index].statement:
                        found["recall"] += 1
                    else:
                        found["wrong"] += 1
                for i in range(1, len(case.old_hops)):
                    hop = case.old_hops[i]
                    # the original chain's entity at hop i is hop i-1's old answer; skip it if a batch edit covers it
                    if (case.old_hops[i - 1].answers[0].casefold(), case.edits[i].relation) in edited:
                        found["edited_elsewhere"] += 1
                        continue
                    hit = detector.decide(hop.question).best
                    found["false_hit" if hit is not None else "quiet"] += 1
                first = case.edit_for_hop()[0]
                for question in case.questions if first is not None else ():
                    hit = detector.decide(question).best
                    found["compound_none" if hit is None else
                          "first_hop" if hit.statement == case.edits[first].statement else "compound_other"] += 1
    asked = found["recall"] + found["wrong"] + found["missed"]
    unedited = found["false_hit"] + found["quiet"]
    compound = found["first_hop"] + found["compound_other"] + found["compound_none"]
    return {"k": str(k), "edited_questions": asked, "recall": round(found["recall"] / asked, 4),
            "wrong_edit": round(found["wrong"] / asked, 4), "missed": round(found["missed"] / asked, 4),
            "unedited_questions": unedited, "false_hit_rate": round(found["false_hit"] / max(unedited, 1), 4),
            "left_out_edited_elsewhere": found["edited_elsewhere"], "compound_questions": compound,
            "first_hop": round(found["first_hop"] / max(compound, 1), 4),
            "compound_other_edit": round(found["compound_other"] / max(compound, 1), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--k", nargs="+", default=["1", "all"])
    parser.add_argument("--detector", nargs="+", default=["edit", "cross-encoder:0.4", "embedding:0.701"],
                        help="detectors to measure: edit, or NAME:CUT for a statement-only classifier behind a cosine cut")
    parser.add_argument("--head", default=None, help="the edit detector's head folder from 'memedit scope train' (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "mquake_scope.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = load_mquake(args.data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.detector:
            name, _, cut = spec.partition(":")
            first = float(cut) if cut else None
            classifier = load_classifier(name, embedder=get_embedder(), path=args.head if name == "edit" else None)
            for k in args.k:
                started = time.time()
                row = {"detector": name, "threshold": classifier.threshold, "first_threshold": first,
                       **measure(cases, k, classifier, first, Path(tmp)), "seconds": None}
                row["seconds"] = round(time.time() - started, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| detector | first-stage cosine | k | recall | wrong edit | missed | false-hit rate | multi-hop question: first hop / another edit | s |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['detector']} | {r['first_threshold'] if r['first_threshold'] is not None else '–'} | {r['k']} | {100 * r['recall']:.1f} | {100 * r['wrong_edit']:.1f} | {100 * r['missed']:.1f} "
              f"| {100 * r['false_hit_rate']:.1f} | {100 * r['first_hop']:.1f} / {100 * r['compound_other_edit']:.1f} | {r['seconds']} |")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"data": args.data, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
