"""The plot of multi-hop accuracy against k, one line per router (and model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable


def _k_order(k: str) -> tuple[int, int]:
    return (1, 0) if k == "all" else (0, int(k))


def collect_summaries(root: str | Path) -> list[dict[str, Any]]:
    """Every ``summary.json`` of an MQuAKE run under ``root`` (one folder level down, or root itself)."""
    root = Path(root)
    found = []
    for path in sorted([root / "summary.json", *root.glob("*/summary.json")]):
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("meta", {}).get("benchmark") == "mquake":
                found.append(data)
    return found


def plot_accuracy_vs_k(summaries: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write a PNG: multi-hop accuracy (y) against k (x: the k values run, "all" last)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, dict[str, float]] = {}
    for data in summaries:
        meta, summary = data["meta"], data["summary"]
        label = f"{meta.get('router')} ({meta.get('model')})"
        lines.setdefault(label, {})[str(meta["k"])] = summary["accuracy"]
    if not lines:
        raise ValueError("no MQuAKE summaries to plot")
    ks = sorted({k for points in lines.values() for k in points}, key=_k_order)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, points in sorted(lines.items()):
        xs = [ks.index(k) for k in ks if k in points]
        ax.plot(xs, [points[ks[x]] for x in xs], marker="o", label=label)
    ax.set_xticks(range(len(ks)), [f"k={k}" for k in ks])
    ax.set_ylabel("multi-hop accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("MQuAKE: accuracy against the number of edits in memory")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
