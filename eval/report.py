"""Evaluation reports: ``summary.json``, ``cases.jsonl`` and a Markdown table in ``report.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

COLUMNS = (("reliability", "Reliability"), ("generality", "Generality"), ("locality", "Locality"), ("portability", "Portability"))
HEADER_FIELDS = (("dataset", "Data set"), ("model", "Model"), ("router", "Router"), ("scoring", "Scoring"), ("command", "Command"))
MISSING = "–"


def write_report(out_dir: str | Path, summary: dict, meta: dict, rows: list[dict]) -> dict[str, Path]:
    """Write ``summary.json`` (``{"meta", "summary"}``), ``cases.jsonl`` (the rows) and ``report.md``.

    ``summary`` maps a scoring name ("exact_match", "token_accuracy") to a metric dict from
    :func:`~memedit.eval.metrics.summarize` (a ``"fluency"`` entry, if any, is shown too),
    or a router name to such a mapping; the table has one row per (router, scoring). A
    flat summary takes its router from ``meta["router"]``. Returns the paths by name:
    ``summary``, ``cases``, ``report``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "cases": out / "cases.jsonl", "report": out / "report.md"}
    paths["summary"].write_text(json.dumps({"meta": meta, "summary": summary}, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    with paths["cases"].open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    paths["report"].write_text(render_markdown(summary, meta), encoding="utf-8")
    return paths


def _table_rows(summary: Mapping[str, Any], meta: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    nested = bool(summary) and all(isinstance(v, Mapping) and v and all(isinstance(x, Mapping) for x in v.values()) for v in summary.values())
    if nested:
        return [(str(router), str(scoring), m) for router, scorings in summary.items() for scoring, m in scorings.items()]
    router = meta.get("router", MISSING)
    return [(str(router), str(scoring), m) for scoring, m in summary.items()]


def render_markdown(summary: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """The Markdown report: a header from ``meta`` and the results table (percentages)."""
    rows = _table_rows(summary, meta)
    subtypes = list(dict.fromkeys(k for _, _, m in rows for k in m if k.startswith("portability/")))
    lines = ["# memedit evaluation report", ""]
    header = dict(meta)
    header.setdefault("scoring", ", ".join(dict.fromkeys(s for _, s, _ in rows)) or None)
    for key, label in HEADER_FIELDS:
        value = header.get(key)
        if value not in (None, ""):
            lines.append(f"- {label}: `{value}`" if key == "command" else f"- {label}: {_cell(value)}")
    for key, value in meta.items():
        if key not in dict(HEADER_FIELDS) and isinstance(value, (str, int, float, bool)):
            lines.append(f"- {key}: {_cell(value)}")
    lines += ["", "Scores are percentages: each case's probes of a metric are averaged, then the cases are.",
              "Fluency is the weighted bi-/tri-gram entropy of generations.", ""]
    names = ["Router", "Scoring"] + [label for _, label in COLUMNS] + [f"Portability: {s.split('/', 1)[1]}" for s in subtypes] + ["Fluency", "n cases"]
    lines += ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for router, scoring, m in rows:
        cells = [_cell(router), _cell(scoring)] + [_number(m.get(k)) for k, _ in COLUMNS] + [_number(m.get(s)) for s in subtypes]
        cells += [_number(m.get("fluency")), str(m["n_cases"]) if isinstance(m.get("n_cases"), int) else MISSING]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return MISSING
    return f"{value:.2f}"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
