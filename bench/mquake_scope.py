"""PokeMQA's scope detector on MQuAKE-hard sub-questions: recall and false hits.

Run it from the repository root (no language model is loaded; about 2 min on 2 cores):

    python bench/mquake_scope.py                 # both detectors, both first-stage cuts, k = 1 and all
    python bench/mquake_scope.py --detector cross-encoder --first-threshold 0.701 --k all

For each k, the memory holds the edits of each batch of k cases (k = all: all 1,716 edits
of the file). The detector (``PokeMQARouter.detect``: MiniLM cosine >= ``first_threshold``,
then the second stage) is asked:

- each case's gold single-hop questions after the edits (``new_single_hops``): every hop of
  MQuAKE-hard is edited, so the detector should return that hop's edit. Recall is the share
  for which it returns exactly that edit; ``wrong`` the share for which it returns another.
- each case's original single-hop questions 2-4 (``single_hops``: about the pre-edit
  entities, e.g. "Who is the director of The Beatles?"): no edit of the case is about them,
  so any hit is a false hit (another case may, rarely, edit the same fact; such questions
  are counted apart and left out).

The detector was trained on KnowEdit, never on MQuAKE. Figures are printed and written as
JSON to ``--results`` (default bench/results/mquake_scope.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from memedit import Memory
from memedit.embeddings import get_embedder
from memedit.eval.mquake import batches, load_mquake
from memedit.retrievers.pokemqa import PokeMQARouter
from memedit.retrievers.serac import EMBEDDING_THRESHOLD, load_scope

DATA = Path(os.environ.get("MEMEDIT_DATA", "/work/shared/data")) / "mquake-hard" / "MQuAKE-hard.json"


def measure(cases, k, detector, first_threshold: float, folder: Path) -> dict:
    embedder = get_embedder()
    found = {"recall": 0, "wrong": 0, "missed": 0, "false_hit": 0, "quiet": 0, "edited_elsewhere": 0}
    for number, group in enumerate(batches(cases, k)):
        with Memory(folder / f"k{k}-{number}.db", embedder=embedder) as memory:
            memory.add_many([e for c in group for e in c.edits])
            router = PokeMQARouter(None, memory, detector=detector, first_threshold=first_threshold)
            edited = {(e.subject.casefold(), e.relation) for c in group for e in c.edits}
            for case in group:
                for hop, index in zip(case.new_hops, case.edit_for_hop()):
                    hit, _ = router.detect(hop.question)
                    if hit is None:
                        found["missed"] += 1
                    elif hit.edit.statement == case.edits[index].statement:
                        found["recall"] += 1
                    else:
                        found["wrong"] += 1
                for i in range(1, len(case.old_hops)):
                    hop = case.old_hops[i]
                    # the original chain's entity at hop i is hop i-1's old answer; skip it if a batch edit covers it
                    if (case.old_hops[i - 1].answers[0].casefold(), case.edits[i].relation) in edited:
                        found["edited_elsewhere"] += 1
                        continue
                    hit, _ = router.detect(hop.question)
                    found["false_hit" if hit is not None else "quiet"] += 1
    asked = found["recall"] + found["wrong"] + found["missed"]
    unedited = found["false_hit"] + found["quiet"]
    return {"k": str(k), "edited_questions": asked, "recall": round(found["recall"] / asked, 4),
            "wrong_edit": round(found["wrong"] / asked, 4), "missed": round(found["missed"] / asked, 4),
            "unedited_questions": unedited, "false_hit_rate": round(found["false_hit"] / max(unedited, 1), 4),
            "left_out_edited_elsewhere": found["edited_elsewhere"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--k", nargs="+", default=["1", "all"])
    parser.add_argument("--detector", nargs="+", default=["cross-encoder", "embedding"])
    parser.add_argument("--first-threshold", type=float, nargs="+", default=[EMBEDDING_THRESHOLD, 0.4],
                        help="first-stage cosine cuts to measure (default: the KnowEdit-calibrated 0.701, and 0.4)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "mquake_scope.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = load_mquake(args.data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.detector:
            detector = load_scope(name, embedder=get_embedder())
            for first in args.first_threshold:
                for k in args.k:
                    started = time.time()
                    row = {"detector": name, "threshold": detector.threshold, "first_threshold": first,
                           **measure(cases, k, detector, first, Path(tmp)), "seconds": None}
                    row["seconds"] = round(time.time() - started, 1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| detector | first-stage cosine | k | recall | wrong edit | missed | false-hit rate | s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['detector']} | {r['first_threshold']} | {r['k']} | {100 * r['recall']:.1f} | {100 * r['wrong_edit']:.1f} | {100 * r['missed']:.1f} "
              f"| {100 * r['false_hit_rate']:.1f} | {r['seconds']} |")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"data": args.data, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
