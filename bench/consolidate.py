"""ROME and MEMIT consolidation: speed, memory, and the edited weights' quality on KnowEdit.

Figures printed (and written to JSON):

- key statistics: seconds for the covariance of every default layer, computed (first
  run, into a fresh folder) and loaded from the cache (second run);
- ROME: seconds per edit over ``--rome`` edits written one after another;
- MEMIT: seconds for one batch of each ``--memit`` size;
- peak resident memory of the process during each run (sampled every 0.1 s);
- quality of the consolidated weights on the KnowEdit wiki_counterfact cases of that run
  (the first N, the same cases the routers' table uses), KnowEdit's way: raw cloze prompts,
  teacher-forced token accuracy; reliability (edit prompt), generality (rephrasings, where
  the data has them), locality (agreement with the unedited model's predictions along the
  ground truth), portability. No router is involved: the weights answer alone. Beside
  them, verification's own measure on both forms of each edit: the share of edits whose
  cloze prompt gives the whole target as the greedy continuation ("cloze whole"), and
  whose prompt asked as a chat question, through the routers' base prompt (the way
  ``EditedModel.ask`` asks once an edit has left the retrieval path), gives it as the
  greedy start of the reply ("chat whole", before and after the batch), with the mean
  target token accuracy of the chat form; and the 20-prompt unrelated locality sample
  (raw and chat), the share of greedy tokens kept.

With ``--baseline NAME=VALUE ...`` each method also runs with those settings, in the same
process, so the two stand side by side: ``--baseline retries=0`` is MEMIT without its retry
round; ``--baseline`` alone is as before the chat form existed (values and keys from the
cloze prompts only, ``chat_form=false``).

Every run goes through ``Memory.consolidate`` with verification on and the locality bound
off (``max_locality_loss=1``), so every batch is kept and measured whole; the report's
count of verified edits is printed beside it. After each run the batch is reverted, which
restores the base weights bit for bit (checked), so runs do not see each other's edits.

    .venv/bin/python bench/consolidate.py --model smollm2-135m --rome 10 --memit 10 100 --baseline retries=0
    .venv/bin/python bench/consolidate.py --model qwen2.5-1.5b --rome 3 --memit 10 --stats-tokens 10000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
from pathlib import Path

from memedit.model_files import data_dir

ROOT = Path(__file__).resolve().parent.parent
DATA = data_dir() / "knowedit" / "wiki_counterfact" / "train_cf.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(DATA), help="KnowEdit wiki_counterfact JSON (train_cf.json)")
    p.add_argument("--rome", type=int, default=10, help="ROME edits (0: skip)")
    p.add_argument("--memit", type=int, nargs="*", default=[10, 100], help="MEMIT batch sizes")
    p.add_argument("--offset", type=int, default=0,
                   help="skip this many cases first (tune on a training slice, e.g. --offset 200; the bench's figures use 0)")
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                   help="editor settings for every run, e.g. steps=40 kl_factor=0.5 (see param_editors.settings)")
    p.add_argument("--stats-tokens", type=int, help="corpus tokens behind the key statistics (default: the editors')")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baseline", nargs="*", metavar="NAME=VALUE",
                   help="also run each method with these settings, as the baseline in the same run (e.g. retries=0; "
                        "alone: chat_form=false, the cloze prompts only)")
    p.add_argument("--fresh-stats", action="store_true",
                   help="compute the key statistics into a temporary folder (timed), not the shared cache")
    p.add_argument("--out", help="JSON file (default bench/results/consolidate-<model>.json)")
    return p.parse_args(argv)


class PeakMemory:
    """Peak resident set size of this process while the block runs (sampled)."""

    def __enter__(self) -> "PeakMemory":
        self.peak, self._stop = _rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def predictions(lm, cases) -> dict[tuple[str, str], tuple[int, ...]]:
    """The model's greedy predictions along each locality probe's ground truth."""
    return {(c.case_id, p.prompt): lm.score(p.prompt, " " + p.answers[0]).predicted_ids
            for c in cases for p in c.by_metric("locality")}


def forms_reliability(lm, edits) -> dict[str, float]:
    """Verification's measure on both forms (``param_editors.consolidate.reliability``),
    in percent: edits whose cloze / chat form gives the whole target, mean chat token accuracy."""
    from memedit.param_editors.consolidate import reliability
    from memedit.param_editors.tracing import Request

    scores = [reliability(lm, Request.from_edit(e)) for e in edits]
    n = len(scores)
    return {"cloze_whole": 100 * sum(c == 1.0 for c, _ in scores) / n, "chat_whole": 100 * sum(t == 1.0 for _, t in scores) / n,
            "chat_tokens": 100 * sum(t for _, t in scores) / n}


def quality(lm, cases, before) -> dict[str, float | None]:
    """KnowEdit's four metrics (percent), averaged per case and then over cases."""
    per_metric: dict[str, list[float]] = {m: [] for m in ("reliability", "generality", "locality", "portability")}
    for case in cases:
        for metric in per_metric:
            probes = case.by_metric(metric)
            if not probes:
                continue
            scores = []
            for p in probes:
                if metric == "locality":
                    after = lm.score(p.prompt, " " + p.answers[0]).predicted_ids
                    old = before[(case.case_id, p.prompt)]
                    scores.append(sum(a == b for a, b in zip(after, old)) / len(old))
                else:
                    scores.append(max(lm.score(p.prompt, " " + a).token_accuracy for a in p.answers))
            per_metric[metric].append(sum(scores) / len(scores))
    return {m: (100 * sum(v) / len(v) if v else None) for m, v in per_metric.items()}


def _setting(item: str) -> tuple[str, bool | float | int]:
    """One ``--set NAME=VALUE``: the value as the setting's type (true/false/1/0 for a flag)."""
    from memedit.param_editors.values import ValueSettings

    name, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"--set takes NAME=VALUE, got {item!r}")
    field = ValueSettings.__dataclass_fields__.get(name)
    if field is not None and field.type in (bool, "bool"):
        flags = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if value.lower() not in flags:
            raise SystemExit(f"--set {name} takes true or false, got {value!r}")
        return name, flags[value.lower()]
    try:
        number = float(value)
    except ValueError:
        raise SystemExit(f"--set {name} takes a number, got {value!r}") from None
    return name, int(number) if number.is_integer() and name in ("steps", "retries") else number


def run(lm, cases, method: str, stats_root: Path | None, stats_tokens: int | None, workdir: Path,
        overrides: dict, baseline: dict | None = None) -> dict:
    """One consolidation of ``cases`` with ``overrides`` (and ``baseline``'s settings over them), measured and reverted."""
    from memedit.param_editors.deltas import tensor_sha256

    from memedit import Memory

    base = {n: tensor_sha256(p) for n, p in lm.model.named_parameters() if n.endswith("down_proj.weight")}
    before = predictions(lm, cases)
    settings = {**overrides, **(baseline or {})}
    with Memory(workdir / f"{method}-{len(cases)}-{'baseline' if baseline is not None else 'default'}.db") as memory:
        edits = memory.add_many([c.edit for c in cases])
        chat_before = forms_reliability(lm, edits)
        with PeakMemory() as peak:
            report = memory.consolidate(lm, method=method, max_locality_loss=1.0, stats_root=stats_root,
                                        stats_tokens=stats_tokens, progress=True, **settings)
        scores = quality(lm, cases, before)
        scores.update(forms_reliability(lm, edits))
        scores["chat_whole_before"] = chat_before["chat_whole"]
        if report.committed:
            memory.revert(report.batch, lm)
        restored = base == {n: tensor_sha256(p) for n, p in lm.model.named_parameters() if n.endswith("down_proj.weight")}
    return {"method": method, "baseline": baseline, "edits": len(cases), "layers": list(report.layers),
            "seconds_edit": report.seconds["edit"],
            "seconds_per_edit": report.seconds["edit"] / len(cases), "verified": len(report.consolidated),
            "locality_sample": report.locality, "peak_rss_gb": peak.peak / 2**30, "restored_bit_for_bit": restored,
            **scores}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from memedit.eval.knowedit import load_knowedit
    from memedit.param_editors import default_settings, key_covariance

    from memedit.models import load_model

    lm = load_model(args.model)
    sizes = [args.rome] + list(args.memit)
    cases = load_knowedit(args.data, limit=args.offset + max(sizes), dataset="wiki_counterfact")[args.offset:]
    overrides = dict(_setting(item) for item in args.set)
    baseline = None if args.baseline is None else (dict(_setting(item) for item in args.baseline) or {"chat_form": False})
    results: dict = {"model": args.model, "threads": args.threads, "offset": args.offset, "settings": overrides, "runs": []}
    with tempfile.TemporaryDirectory(prefix="memedit-bench-") as tmp:
        tmp = Path(tmp)
        stats_root = tmp / "stats" if args.fresh_stats else None  # None: the shared cache, kept between runs
        layers = sorted({*default_settings(lm, "rome").layers, *default_settings(lm, "memit").layers})
        tokens = args.stats_tokens or default_settings(lm, "memit").stats_tokens
        with PeakMemory() as peak:
            first = key_covariance(lm, layers, tokens, root=stats_root, progress=True)
        second = key_covariance(lm, layers, tokens, root=stats_root, progress=False)
        assert second.computed == []
        results["statistics"] = {"layers": layers, "tokens": tokens, "computed": first.computed, "seconds_first": first.seconds,
                                 "seconds_cached": second.seconds, "peak_rss_gb": peak.peak / 2**30}
        print(f"key statistics, {len(layers)} layers x {tokens:,} tokens: {first.seconds:.1f} s "
              f"({len(first.computed)} layers computed), {second.seconds:.2f} s cached (peak RSS {peak.peak / 2**30:.1f} GB)",
              flush=True)
        plan = ([("rome", args.rome)] if args.rome else []) + [("memit", n) for n in args.memit]
        for method, n in plan:
            for variant in [None] + ([baseline] if baseline is not None else []):
                row = run(lm, cases[:n], method, stats_root, args.stats_tokens, tmp, overrides, variant)
                results["runs"].append(row)
                print(json.dumps(row), flush=True)

    print(f"\n{args.model}, {args.threads} threads; KnowEdit wiki_counterfact cases {args.offset} onwards, N of them"
          f"{'; settings ' + str(overrides) if overrides else ''}. Token accuracy (KnowEdit's "
          "reliability, generality, same-subject locality, portability); 'whole': % of edits whose form gives the whole "
          "target greedily; chat before: the unedited model; locality sample: % of 20 unrelated prompts' greedy tokens "
          "kept, raw and chat")
    print("| method | run | edits | s/edit | verified | peak RSS | cloze whole | chat whole (before) | chat tokens "
          "| reliability | generality | locality | portability | locality sample |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda v: "–" if v is None else f"{v:.1f}"
    for r in results["runs"]:
        label = "default" if r["baseline"] is None else "baseline " + " ".join(f"{k}={v}" for k, v in r["baseline"].items())
        print(f"| {r['method'].upper()} | {label} | {r['edits']} | {r['seconds_per_edit']:.1f} | {r['verified']} | "
              f"{r['peak_rss_gb']:.1f} GB | {fmt(r['cloze_whole'])} | {fmt(r['chat_whole'])} ({fmt(r['chat_whole_before'])}) | "
              f"{fmt(r['chat_tokens'])} | {fmt(r['reliability'])} | {fmt(r['generality'])} | {fmt(r['locality'])} | "
              f"{fmt(r['portability'])} | {fmt(100 * r['locality_sample'])} |")
    out = Path(args.out or ROOT / "bench" / "results" / f"consolidate-{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
