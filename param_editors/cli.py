"""``memedit consolidate``: write edits into a model's weights, list the batches, revert one."""

from __future__ import annotations

import argparse
import json

from memedit.errors import ArgumentError


def add_consolidate_parser(commands, common: argparse.ArgumentParser) -> None:
    sub = commands.add_parser(
        "consolidate", parents=[common], help="write active triple edits into a local model's weights (MEMIT or ROME)",
        description="Write the namespace's active triple edits (or --edit IDs) into the model's weights, verify each "
                    "edit and a locality sample, and journal the batch. Edits that took leave the retrieval path. "
                    "--auto lets a policy choose them (--older-than, --beyond, --batch-size). "
                    "--list shows the batches in force; --revert BATCH takes one out.")
    sub.add_argument("--method", choices=["memit", "rome"], default="memit", help="default: memit")
    sub.add_argument("--model", default="smollm2-135m", help="packaged name or local path (default: smollm2-135m)")
    sub.add_argument("--edit", action="append", dest="edits", metavar="ID", help="consolidate only this edit (repeatable)")
    sub.add_argument("--no-verify", action="store_true", help="mark every written edit consolidated without checking it")
    sub.add_argument("--max-locality-loss", type=float, default=None,
                     help="roll the batch back if more than this share of locality tokens change (default 0.1)")
    sub.add_argument("--layers", type=int, nargs="+", help="blocks to edit (default: the model family's)")
    sub.add_argument("--stats-tokens", type=int, help="corpus tokens behind the key statistics (default 40000)")
    sub.add_argument("--retries", type=int, metavar="N",
                     help="MEMIT: rounds that retrain the edits the batch missed, on the edited weights (default 1; 0: none)")
    sub.add_argument("--auto", action="store_true",
                     help="let a policy choose the edits: --older-than, --beyond and/or --batch-size (at least one)")
    sub.add_argument("--older-than", metavar="AGE", help="with --auto: edits created longer ago than AGE (7d, 12h, 30m, 90s)")
    sub.add_argument("--beyond", type=int, metavar="N",
                     help="with --auto: keep the newest N active edits on the retrieval path, choose the older ones")
    sub.add_argument("--batch-size", type=int, metavar="N", help="with --auto: at most N edits, oldest first (default 50)")
    sub.add_argument("--list", action="store_true", help="list the batches in force and exit")
    sub.add_argument("--revert", metavar="BATCH", help="take this batch out of force and exit")


def cmd_consolidate(memory, args: argparse.Namespace) -> int:
    from .consolidate import MAX_LOCALITY_LOSS
    from .policy import nothing_matched, select

    if args.list:
        batches = memory.weight_batches()
        if args.json:
            print(json.dumps(batches, ensure_ascii=False))
        elif not batches:
            print(f"no consolidation batches in namespace {memory.namespace!r}")
        for b in batches if not args.json else ():
            print(f"{b['batch']}  {b['method']}  {b['model']}  layers {','.join(map(str, b['layers']))}  {len(b['edits'])} edits")
        return 0
    if args.revert:
        back = memory.revert(args.revert)
        if args.json:
            print(json.dumps({"reverted": args.revert, "edits": back}))
        else:
            print(f"reverted {args.revert}: {len(back)} edits back on the retrieval path")
        return 0
    policy = _policy(args)
    edits = args.edits if policy is None else select(memory, policy)
    if policy is not None and not edits:
        report = nothing_matched(policy, args.method)  # no model to load
    else:
        from memedit.models import load_model

        model = load_model(args.model)
        memory.apply_consolidated(model)
        report = memory.consolidate(
            model, method=args.method, edits=edits, verify=not args.no_verify, progress=not args.json,
            max_locality_loss=MAX_LOCALITY_LOSS if args.max_locality_loss is None else args.max_locality_loss,
            layers=args.layers, stats_tokens=args.stats_tokens, retries=args.retries)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print("\n".join(report.lines()))
    return 0 if report.committed or not report.outcomes else 2


POLICY_FLAGS = {"older_than": "--older-than", "beyond": "--beyond", "batch_size": "--batch-size"}


def _policy(args: argparse.Namespace):
    """The ConsolidationPolicy of ``--auto`` and its flags; None without ``--auto``. ArgumentError names the flag."""
    from .policy import ConsolidationPolicy

    given = {name: getattr(args, name) for name in POLICY_FLAGS if getattr(args, name) is not None}
    if not args.auto:
        if given:
            raise ArgumentError(POLICY_FLAGS[next(iter(given))], "chooses edits for --auto; add --auto")
        return None
    if not given:
        raise ArgumentError("--auto", "needs a policy: give --older-than AGE (such as 7d), --beyond N and/or --batch-size N")
    if args.edits:
        raise ArgumentError("--auto", "and --edit were both given; let the policy choose the edits, or name them, not both")
    try:
        return ConsolidationPolicy(**given)
    except ArgumentError as err:
        raise ArgumentError(POLICY_FLAGS[err.name], str(err).removeprefix(f"{err.name} ")) from None
