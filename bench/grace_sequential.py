"""GRACE on a stream of KnowEdit ZsRE edits: reliability, generality, locality after T edits.

The first max(T) ZsRE cases whose prompt contains their subject (the triple edits GRACE
can key) are added to one memory one after another; after each ``memory.add`` the GRACE
router syncs, which inserts that edit into the codebook (the edit time measured is this
sync: the key, the Adam loop and the radius rules; embedding the statement for the
memory's search index is not counted). At each checkpoint T, after the T-th edit, the
whole stream so far is in the codebook and the first T cases are scored (a uniform
sample of ``--eval-cases`` of them when T is larger): every probe goes through
``router.plan`` (the codebook lookup decides, nobody tells it which edit applies).

Scorings (both reported): ``token_accuracy``, teacher-forced share of the target's
tokens that are the greedy choice (KnowEdit's and WISE's measure; for locality, agreement
of the predictions along the ground truth with the unedited model's); ``exact_match``,
the greedy answer contains the target (for locality: the same answer as the unedited
model). A locality probe the lookup sends to no key is scored 1.0 without running it:
its logits are the unedited model's bit for bit (``tests/test_grace.py`` checks this).

``--calibrate`` instead measures, on ZsRE cases 1100-1299 (never used for evaluation),
how far each layer's keys put rephrasings from their own key and from other keys and
locality prompts, and prints the radius that keeps 99 % of the negatives out.

    .venv/bin/python bench/grace_sequential.py --T 10 100 1000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from memedit.model_files import data_dir

ROOT = Path(__file__).resolve().parent.parent
DATA = data_dir() / "knowedit" / "ZsRE" / "ZsRE-test-all.json"
OUT = ROOT / "bench" / "results" / "grace_sequential.json"
CALIBRATION_CASES = (1100, 1300)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(DATA), help="KnowEdit ZsRE JSON (ZsRE-test-all.json)")
    p.add_argument("--T", type=int, nargs="+", default=[10, 100, 1000], help="checkpoints (numbers of edits)")
    p.add_argument("--eval-cases", type=int, default=200, help="cases scored per checkpoint at most (a uniform sample)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layer", type=int)
    p.add_argument("--radius", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--calibrate", action="store_true", help="measure key distances per layer on training cases and exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from memedit.eval.knowedit import load_knowedit

    from memedit import Memory, load_model

    model = load_model(args.model)
    cases = load_knowedit(args.data, dataset="zsre")
    if args.calibrate:
        calibrate(model, cases[slice(*CALIBRATION_CASES)])
        return 0
    checkpoints = sorted(set(args.T))
    if checkpoints[-1] > CALIBRATION_CASES[0]:
        sys.exit(f"--T must stay at or below {CALIBRATION_CASES[0]}: later cases calibrate the radius")
    pool = cases[:CALIBRATION_CASES[0]]
    stream = [c for c in pool if c.edit.is_triple][:checkpoints[-1]]
    skipped = sum(not c.edit.is_triple for c in pool[:pool.index(stream[-1]) + 1])
    if len(stream) < checkpoints[-1]:
        sys.exit(f"only {len(stream)} triple cases before case {CALIBRATION_CASES[0]}; lower --T")

    from memedit.retrievers.grace import GRACERouter

    results = {"model": args.model, "data": str(args.data), "threads": args.threads, "protocol":
               "sequential: edits applied one after another; each checkpoint scored after all T edits of the stream",
               "free_text_cases_skipped": skipped, "checkpoints": []}
    with tempfile.TemporaryDirectory() as tmp:
        memory = Memory(Path(tmp) / "grace.db", namespace="bench")
        router = GRACERouter(model, memory, layer=args.layer, radius=args.radius, steps=args.steps, lr=args.lr, autosave=False)
        results["settings"] = dict(router.settings.__dict__)
        print(f"GRACE on {args.model}: layer {router.settings.layer}, radius {router.settings.radius}, "
              f"steps {router.settings.steps}, lr {router.settings.lr}; {len(stream)} edits "
              f"({skipped} free-text cases skipped)", flush=True)
        edit_seconds: list[float] = []
        ids: dict[str, str] = {}
        for i, case in enumerate(stream, start=1):
            ids[case.case_id] = memory.add(case.edit).id
            started = time.perf_counter()
            router.sync()
            edit_seconds.append(time.perf_counter() - started)
            if i % 50 == 0:
                print(f"  {i} edits, {sum(edit_seconds) / i:.2f} s/edit", flush=True)
            if i in checkpoints:
                row = checkpoint(router, stream[:i], ids, edit_seconds, args.eval_cases)
                results["checkpoints"].append(row)
                print_row(row)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        memory.close()
    print(f"wrote {args.out}")
    return 0


def checkpoint(router, cases, ids: dict[str, str], edit_seconds, eval_cases: int) -> dict:
    started = time.perf_counter()
    ref = router.save()
    save_seconds = time.perf_counter() - started
    sample = cases if len(cases) <= eval_cases else sorted(random.Random(0).sample(cases, eval_cases), key=cases.index)
    started = time.perf_counter()
    scores = {s: {m: [] for m in ("reliability", "generality", "locality")} for s in ("token_accuracy", "exact_match")}
    routed = {m: [] for m in ("reliability", "generality", "locality")}
    for case in sample:
        for metric in routed:
            probes = case.by_metric(metric)
            if not probes:
                continue
            per = [score_probe(router, ids[case.case_id], probe) for probe in probes]
            for scoring in scores:
                scores[scoring][metric].append(sum(p[scoring] for p in per) / len(per))
            routed[metric].append(sum(p["own"] if metric != "locality" else p["routed"] for p in per) / len(per))
    rules = {}
    for event in router.events:
        rules[event["rule"]] = rules.get(event["rule"], 0) + 1
    steps = [e["train"]["steps"] for e in router.events if "train" in e]
    superseded = sum(router.memory.get(ids[c.case_id]).status != "active" for c in cases)
    return {
        "T": len(cases), "cases_scored": len(sample), "edits_superseded_by_a_later_case": superseded,
        **{f"{m}_{s}": round(100 * sum(v) / len(v), 2) for s, by in scores.items() for m, v in by.items() if v},
        "reliability_routed_to_own_key": round(100 * _mean(routed["reliability"]), 2),
        "generality_routed_to_own_key": round(100 * _mean(routed["generality"]), 2),
        "locality_routed_to_a_key": round(100 * _mean(routed["locality"]), 2),
        "seconds_per_edit": round(_mean(edit_seconds), 3), "adam_steps_per_value": round(_mean(steps), 2),
        "entries": len(router.entries), "rules": rules,
        "codebook_tensor_bytes": router.codebook_bytes(), "codebook_file_bytes": ref.bytes,
        "save_seconds": round(save_seconds, 3), "eval_seconds": round(time.perf_counter() - started, 1),
    }


def score_probe(router, edit_id: str, probe) -> dict:
    from memedit.eval.metrics import answer_matches

    plan = router.plan(probe.prompt)
    own = plan.route == "grace" and edit_id in {e.id for e in plan.edits_used}
    routed = plan.route != "base"
    if probe.metric == "locality":
        if not routed:
            return {"token_accuracy": 1.0, "exact_match": 1.0, "own": own, "routed": False}
        base = router.base_prompt(probe.prompt)
        reference = probe.answers[0] if probe.answers else router.model.generate(base, max_new_tokens=router.max_new_tokens)
        after = router.score(plan, reference).predicted_ids if plan.prompt is not None else ()
        before = router.model.score(base, reference).predicted_ids
        same_text = router.run(plan).text == router.model.generate(base, max_new_tokens=router.max_new_tokens)
        agree = sum(a == b for a, b in zip(after, before)) / len(before)
        return {"token_accuracy": agree, "exact_match": float(same_text), "own": own, "routed": True}
    if plan.prompt is None:  # a refusal: nothing to score
        return {"token_accuracy": 0.0, "exact_match": 0.0, "own": own, "routed": routed}
    accuracy = max(router.score(plan, answer).token_accuracy for answer in probe.answers)
    text = router.run(plan).text
    return {"token_accuracy": accuracy, "exact_match": float(answer_matches(text, probe.answers)), "own": own, "routed": routed}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def print_row(row: dict) -> None:
    print(f"T={row['T']:>5} ({row['cases_scored']} cases scored)  token accuracy: rel {row['reliability_token_accuracy']:.1f} "
          f"gen {row['generality_token_accuracy']:.1f} loc {row['locality_token_accuracy']:.1f} | exact match: rel "
          f"{row['reliability_exact_match']:.1f} gen {row['generality_exact_match']:.1f} loc {row['locality_exact_match']:.1f} | "
          f"{row['seconds_per_edit']:.2f} s/edit, {row['entries']} keys, {row['codebook_file_bytes']:,} bytes, rules {row['rules']}",
          flush=True)


def calibrate(model, cases) -> None:
    """Per layer: the radius keeping 99 % of negatives (locality prompts, other cases'
    rephrasings) out of every key, fitted on half the cases, and the share of rephrasings
    it lets reach their own key on the other half."""
    import torch
    from memedit.retrievers.base import ANSWER_SYSTEM

    from memedit.layout import find_blocks

    blocks = find_blocks(model.model)
    captured: dict[int, torch.Tensor] = {}
    handles = [b.mlp.register_forward_pre_hook(lambda m, a, i=i: captured.__setitem__(i, a[0][0, -1].detach()))
               for i, b in enumerate(blocks)]

    def keys(question: str) -> torch.Tensor:
        prompt = model.chat([{"role": "system", "content": ANSWER_SYSTEM}, {"role": "user", "content": question}])
        with torch.no_grad():
            model.model(input_ids=torch.tensor([model.prompt_ids(prompt)]), use_cache=False)
        return torch.nn.functional.normalize(torch.stack([captured[i] for i in range(len(blocks))]).float(), dim=-1)

    cases = [c for c in cases if c.by_metric("generality")]
    P = torch.stack([keys(c.by_metric("reliability")[0].prompt) for c in cases])
    R = torch.stack([keys(c.by_metric("generality")[0].prompt) for c in cases])
    owners, L = [], []
    for i, c in enumerate(cases):
        for probe in c.by_metric("locality"):
            owners.append(i)
            L.append(keys(probe.prompt))
    L, owners = torch.stack(L), torch.tensor(owners)
    for handle in handles:
        handle.remove()
    half = len(cases) // 2
    print("layer  radius  held-out: generality  locality prompts hit  rephrasings hitting another key")
    for layer in range(len(blocks)):
        stats = []
        for part in (torch.arange(half), torch.arange(half, len(cases))):
            keys_, reph = P[part, layer], R[part, layer]
            d = torch.cdist(reph, keys_)
            own = d.diagonal().clone()
            d.fill_diagonal_(float("inf"))
            wrong = d.min(1).values
            loc = torch.cdist(L[(owners >= part[0]) & (owners <= part[-1]), layer], keys_).min(1).values
            stats.append((own, wrong, loc))
        own, wrong, loc = stats[0]
        radius = float(torch.quantile(torch.cat([wrong, loc]), 0.01))
        own, wrong, loc = stats[1]
        gen = float(((own <= radius) & (own < wrong)).float().mean())
        print(f"{layer:5d}  {radius:6.3f}  {gen:20.3f}  {float((loc <= radius).float().mean()):20.3f}  "
              f"{float((wrong <= radius).float().mean()):30.3f}")


if __name__ == "__main__":
    sys.exit(main())
