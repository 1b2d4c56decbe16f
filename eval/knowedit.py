"""Loaders that turn benchmark files into :class:`~memedit.eval.cases.Case` lists.

KnowEdit (``load_knowedit``)
    The JSON files of the KnowEdit benchmark (ZsRE ``ZsRE-test-all.json``,
    WikiData_counterfact ``train_cf.json`` / ``test_cf.json``), read in place. Each record
    becomes ``Edit(kind="modify", subject, prompt=<record prompt with the subject replaced
    by {}>, target=target_new, old_target=<first ground truth>)``. When the subject does
    not occur in the prompt (not even case-insensitively) the edit is the free-text
    ``Edit(statement=f"{prompt} {target_new}")`` instead; such cases are logged and are
    the ones with ``not case.edit.is_triple``. Probes: ``reliability`` (the prompt, answer
    ``target_new``), ``generality`` (``rephrase_prompt``, ZsRE only), ``portability`` and
    ``locality`` with the record's key as ``subtype`` (``Reasoning``, ``Subject_Aliasing``,
    ``Logical_Generalization``; ``Relation_Specificity``, ``Forgetfulness``) and its
    ground truth, nested lists flattened, as answers. A locality probe may have no answer
    (two records in the real files): locality is scored against the unedited model.

Probe JSONL (``load_probe_jsonl``), our own format, one case per line (blank lines are
skipped, line numbers count from 1)::

    {"id": "capital-fr",                      # optional; default "<file stem>-<line>"
     "edit": {"subject": "France", "prompt": "The capital of {} is", "target": "Lyon",
              "old_target": "Paris"},         # any fields Edit.from_dict takes
     "probes": [                              # optional; default none (a distractor edit)
        {"prompt": "The capital of France is", "answer": "Lyon", "metric": "reliability"},
        {"prompt": "France's capital city is", "answers": ["Lyon"], "metric": "generality"},
        {"prompt": "The capital of Italy is", "answers": ["Rome"], "metric": "locality",
         "subtype": "Relation_Specificity"}]}

A probe has ``prompt``, ``metric`` (reliability, generality, locality or portability),
``answers`` (a list of strings) or ``answer`` (one string), required except for
locality, and an optional ``subtype``. Ids must be unique within the file.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from memedit.checks import optional_whole_number
from memedit.edit import Edit
from memedit.errors import EditError, MemeditError

from .cases import METRICS, Case, Probe

log = logging.getLogger(__name__)

KNOWEDIT_SECTIONS = ("portability", "locality")


class DataError(MemeditError, ValueError):
    """A data file is missing or malformed; the message names the file, the record or line, and the field."""

    def __init__(self, path: str | Path, message: str, where: str = "", field: str = ""):
        self.path, self.where, self.field = str(path), where, field
        parts = [str(path)] + [p for p in (where, field) if p]
        super().__init__(": ".join(parts) + ": " + message)


# ---------------------------------------------------------------- KnowEdit


def detect_dataset(path: str | Path) -> str:
    """``"zsre"`` or ``"wiki_counterfact"`` from the file's name or folder; DataError otherwise."""
    name = str(Path(path)).casefold()
    if "zsre" in name:
        return "zsre"
    if "counterfact" in name or Path(path).name.casefold().endswith("_cf.json"):
        return "wiki_counterfact"
    raise DataError(path, "cannot tell the KnowEdit data set from the file name; pass dataset='zsre' or dataset='wiki_counterfact' "
                          "(on the command line: --dataset zsre or --dataset wiki_counterfact)")


def load_knowedit(path: str | Path, limit: int | None = None, *, dataset: str | None = None) -> list[Case]:
    """The first ``limit`` (all when None) records of a KnowEdit JSON file as cases.

    ``dataset`` names the data set in case ids (``f"{dataset}-{index}"``, index from 0 in
    the file) and sources (``knowedit:<dataset>:<index>``); detected from the path when
    not given.
    """
    path = Path(path)
    _check_limit(limit)
    dataset = dataset or detect_dataset(path)
    if not path.is_file():
        raise DataError(path, "no such file; give the path of a KnowEdit JSON file (e.g. ZsRE/ZsRE-test-all.json)")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"is not valid JSON ({exc})") from None
    if not isinstance(records, list):
        raise DataError(path, f"must hold a JSON list of records, got {type(records).__name__}")
    cases = [_knowedit_case(path, dataset, i, r) for i, r in enumerate(records[:limit] if limit is not None else records)]
    free = sum(not c.edit.is_triple for c in cases)
    if free:
        log.warning("%s: %d of %d records have a prompt without their subject; loaded as free-text edits", path, free, len(cases))
    return cases


def _knowedit_case(path: Path, dataset: str, index: int, record: Any) -> Case:
    where = f"record {index}"
    if not isinstance(record, dict):
        raise DataError(path, f"must be a JSON object, got {type(record).__name__}", where)
    subject, prompt, target = (_text(path, where, record, key) for key in ("subject", "prompt", "target_new"))
    old = _answers(path, where, "ground_truth", record.get("ground_truth"))
    edit_fields = dict(kind="modify", target=target, old_target=old[0] if old else None, source=f"knowedit:{dataset}:{index}")
    template = _template(prompt, subject)
    try:
        if template is not None:
            edit = Edit(subject=subject, prompt=template, **edit_fields)
        else:
            edit = Edit(statement=f"{prompt} {target}", kind="modify", source=edit_fields["source"])
    except EditError as exc:
        raise DataError(path, str(exc), where, exc.field) from None

    probes = [Probe(prompt, (target,), "reliability")]
    if record.get("rephrase_prompt") is not None:
        probes.append(Probe(_text(path, where, record, "rephrase_prompt"), (target,), "generality"))
    for section in KNOWEDIT_SECTIONS:
        groups = record.get(section) or {}
        if not isinstance(groups, dict):
            raise DataError(path, f"must be an object of sub-type -> list of probes, got {type(groups).__name__}", where, section)
        for subtype, items in groups.items():
            if not isinstance(items, list):
                raise DataError(path, f"must be a list of {{prompt, ground_truth}}, got {type(items).__name__}", where, f"{section}.{subtype}")
            for j, item in enumerate(items):
                name = f"{section}.{subtype}[{j}]"
                if not isinstance(item, dict):
                    raise DataError(path, f"must be an object with prompt and ground_truth, got {type(item).__name__}", where, name)
                answers = _answers(path, where, f"{name}.ground_truth", item.get("ground_truth"))
                if not answers and section != "locality":
                    raise DataError(path, "has no answer; a portability probe needs one", where, f"{name}.ground_truth")
                probes.append(Probe(_text(path, where, item, "prompt", name), tuple(answers), section, subtype))
    return Case(f"{dataset}-{index}", edit, tuple(probes))


def _template(prompt: str, subject: str) -> str | None:
    """The prompt with the first occurrence of the subject (exact, else case-insensitive) as ``{}``."""
    if "{}" in prompt:
        return None
    start = prompt.find(subject)
    if start < 0:
        match = re.search(re.escape(subject), prompt, re.IGNORECASE)
        if match is None:
            return None
        start = match.start()
        end = match.end()
    else:
        end = start + len(subject)
    return prompt[:start] + "{}" + prompt[end:]


def _text(path: Path, where: str, record: dict, key: str, prefix: str = "") -> str:
    field = f"{prefix}.{key}" if prefix else key
    value = record.get(key)
    if value is None:
        raise DataError(path, "is missing", where, field)
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, f"must be non-empty text, got {value!r}", where, field)
    return value.strip()


def _answers(path: Path, where: str, field: str, value: Any) -> list[str]:
    """A ground truth (text or nested lists of text) flattened; empty and repeated entries dropped."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str):
            if v.strip() and v.strip() not in out:
                out.append(v.strip())
        elif v is not None:
            raise DataError(path, f"must be text or a list of text, got {type(v).__name__} {v!r}", where, field)

    walk(value)
    return out


def _check_limit(limit: Any) -> None:
    optional_whole_number("limit", limit)


# ---------------------------------------------------------------- probe JSONL

CASE_KEYS = {"id", "edit", "probes"}
PROBE_KEYS = {"prompt", "answers", "answer", "metric", "subtype"}


def load_probe_jsonl(path: str | Path, limit: int | None = None) -> list[Case]:
    """The first ``limit`` (all when None) cases of a probe JSONL file (format in the module docstring)."""
    path = Path(path)
    _check_limit(limit)
    if not path.is_file():
        raise DataError(path, "no such file; give the path of a probe JSONL file")
    cases: list[Case] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if limit is not None and len(cases) >= limit:
                break
            if not line.strip():
                continue
            case = _jsonl_case(path, number, line, default_id=f"{path.stem}-{number}")
            if case.case_id in seen:
                raise DataError(path, f"repeats the id {case.case_id!r} of line {seen[case.case_id]}; ids must be unique", f"line {number}", "id")
            seen[case.case_id] = number
            cases.append(case)
    return cases


def _jsonl_case(path: Path, number: int, line: str, default_id: str) -> Case:
    where = f"line {number}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"is not valid JSON ({exc.msg} at column {exc.colno})", where) from None
    if not isinstance(data, dict):
        raise DataError(path, f"must be a JSON object with edit and probes, got {type(data).__name__}", where)
    unknown = sorted(set(data) - CASE_KEYS)
    if unknown:
        raise DataError(path, f"is not a case field; known fields are {', '.join(sorted(CASE_KEYS))}", where, unknown[0])
    case_id = data.get("id", default_id)
    if not isinstance(case_id, str) or not case_id.strip():
        raise DataError(path, f"must be non-empty text, got {case_id!r}", where, "id")
    if "edit" not in data:
        raise DataError(path, "is missing; give the edit's fields as an object", where, "edit")
    try:
        edit = Edit.from_dict(data["edit"])
    except EditError as exc:
        raise DataError(path, str(exc), where, f"edit.{exc.field}") from None
    except TypeError as exc:
        raise DataError(path, str(exc), where, "edit") from None
    probes = data.get("probes", [])
    if not isinstance(probes, list):
        raise DataError(path, f"must be a list of probe objects, got {type(probes).__name__}", where, "probes")
    return Case(case_id.strip(), edit, tuple(_jsonl_probe(path, where, j, p) for j, p in enumerate(probes)))


def _jsonl_probe(path: Path, where: str, j: int, data: Any) -> Probe:
    name = f"probes[{j}]"
    if not isinstance(data, dict):
        raise DataError(path, f"must be an object with prompt, answers and metric, got {type(data).__name__}", where, name)
    unknown = sorted(set(data) - PROBE_KEYS)
    if unknown:
        raise DataError(path, f"is not a probe field; known fields are {', '.join(sorted(PROBE_KEYS))}", where, f"{name}.{unknown[0]}")
    prompt = _text(path, where, data, "prompt", name)
    metric = data.get("metric")
    if metric not in METRICS:
        raise DataError(path, f"must be one of {', '.join(METRICS)}, got {metric!r}", where, f"{name}.metric")
    if "answers" in data and "answer" in data:
        raise DataError(path, "give answers (a list) or answer (one string), not both", where, f"{name}.answer")
    if "answer" in data:
        key, raw = "answer", data["answer"]
        if not isinstance(raw, str):
            raise DataError(path, f"must be text, got {raw!r}; use answers for a list", where, f"{name}.answer")
    else:
        key, raw = "answers", data.get("answers")
        if raw is not None and not (isinstance(raw, list) and all(isinstance(a, str) for a in raw)):
            raise DataError(path, f"must be a list of strings, got {raw!r}", where, f"{name}.answers")
    answers = _answers(path, where, f"{name}.{key}", raw)
    if not answers and metric != "locality":
        raise DataError(path, f"is required for a {metric} probe: give answers [...] or answer '...'", where, f"{name}.answers")
    subtype = data.get("subtype", "")
    if not isinstance(subtype, str):
        raise DataError(path, f"must be text, got {subtype!r}", where, f"{name}.subtype")
    return Probe(prompt, tuple(answers), metric, subtype.strip())
