"""Collect `memedit eval knowedit` reports into one Markdown table (the README's).

    .venv/bin/python bench/knowedit_table.py OUT_DIR [OUT_DIR ...]

Each OUT_DIR is the --out folder of one run; rows give both scorings and the command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("reliability", "generality", "locality", "portability")


def cell(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def main(folders: list[str]) -> None:
    print("| data set | model | router | cases | scoring | reliability | generality | locality | portability | s/case |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    commands = []
    for folder in folders:
        report = json.loads((Path(folder) / "summary.json").read_text())
        meta, summary = report["meta"], report["summary"]
        router = meta["router"] + (f" ({meta['scope']})" if meta.get("scope") else "")
        for scoring, metrics in summary.items():
            values = " | ".join(cell(metrics.get(c)) for c in COLUMNS)
            print(f"| {meta['dataset']} | {meta['model']} | {router} | {meta['cases']} | {scoring} | {values} | "
                  f"{meta['seconds'] / meta['cases']:.1f} |")
        commands.append(meta.get("command"))
    print()
    for command in commands:
        print(f"    {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
