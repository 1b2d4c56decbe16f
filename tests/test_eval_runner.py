"""The evaluation runner and `memedit eval knowedit`, end to end on SmolLM2 and tiny data."""

from __future__ import annotations

import json

import pytest
from memedit.eval.knowedit import load_probe_jsonl
from memedit.eval.runner import evaluate
from memedit.retrievers.scope import EmbeddingScope

from memedit.cli import main
from memedit.edited_model import make_router
from memedit.model_files import data_dir

CASES = [
    {"id": "tokyo", "edit": {"subject": "Tokyo", "prompt": "{} is the capital of", "target": "Canada"},
     "probes": [{"prompt": "Tokyo is the capital of", "answer": "Canada", "metric": "reliability"},
                {"prompt": "Tokyo is the capital city of which country?", "answer": "Canada", "metric": "generality"},
                {"prompt": "Who wrote the play Hamlet?", "answer": "William Shakespeare", "metric": "locality",
                 "subtype": "Unrelated"}]},
    {"id": "nile", "edit": {"subject": "the Nile", "prompt": "{} flows into", "target": "the Baltic Sea"},
     "probes": [{"prompt": "the Nile flows into", "answer": "Baltic Sea", "metric": "reliability"},
                {"prompt": "What is the boiling point of water in Celsius?", "answer": "100", "metric": "locality"}]},
]


@pytest.fixture
def probe_file(tmp_path):
    path = tmp_path / "probes.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CASES))
    return path


def test_every_probe_is_routed_and_scored_both_ways(lm, probe_file, embedder, tmp_path):
    cases = load_probe_jsonl(probe_file)
    scope = EmbeddingScope(embedder, threshold=0.6)
    summary, rows = evaluate(cases, lambda memory: make_router("serac", lm, memory, scope=scope),
                             progress=False, workdir=tmp_path)
    assert len(rows) == 5 and {r["case_id"] for r in rows} == {"tokyo", "nile"}
    for row in rows:
        assert row["route"] in ("base", "serac")
        steps = [s["step"] for s in row["trace"]]
        assert steps[:2] == ["retrieve", "scope"]
        if row["metric"] == "locality":
            assert row["exact_match"] == float(row["answer"] == row["base_answer"])
            if row["route"] == "base":
                assert row["answer"] == row["base_answer"] and row["token_accuracy"] == 1.0
        else:
            assert row["exact_match"] == float(row["answers"][0].lower() in row["answer"].lower())
    reliability = [r for r in rows if r["metric"] == "reliability"]
    tokyo = next(r for r in reliability if r["case_id"] == "tokyo")
    assert tokyo["route"] == "serac" and tokyo["exact_match"] == 1.0
    # the unrelated questions never reach an edit, so locality is perfect under both scorings
    assert all(r["route"] == "base" for r in rows if r["metric"] == "locality")
    for scoring in ("exact_match", "token_accuracy"):
        assert summary[scoring]["locality"] == 100.0
        assert summary[scoring]["n_cases"] == 2
        expected = 100 * sum(r[scoring] for r in reliability) / 2
        assert summary[scoring]["reliability"] == pytest.approx(expected)


def test_the_cli_writes_json_cases_and_a_markdown_table(lm, probe_file, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["eval", "knowedit", "--data", str(probe_file), "--router", "ike", "--limit", "1",
                 "--scoring", "exact_match", "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["router"] == "ike" and summary["meta"]["cases"] == 1
    assert set(summary["summary"]) == {"exact_match"}
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["case_id"] == "tokyo" for r in rows)
    table = (out / "report.md").read_text()
    reliability = summary["summary"]["exact_match"]["reliability"]
    assert f"{reliability:.2f}" in table and "exact_match" in table
    assert "| ike |" in capsys.readouterr().out


def test_cli_eval_errors_name_the_problem(tmp_path, capsys):
    assert main(["eval", "knowedit", "--data", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")]) == 1
    assert "none.json" in capsys.readouterr().err


def test_cli_dataset_flag_names_a_file_whose_name_does_not(lm, tmp_path, capsys):

    source = data_dir() / "knowedit" / "ZsRE" / "ZsRE-test-all.json"
    records = json.loads(source.read_text(encoding="utf-8"))[:1]
    neutral = tmp_path / "edits.json"
    neutral.write_text(json.dumps(records), encoding="utf-8")
    args = ["eval", "knowedit", "--data", str(neutral), "--router", "serac", "--limit", "1", "--scoring", "exact_match",
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 1
    assert "--dataset zsre or --dataset wiki_counterfact" in capsys.readouterr().err
    assert main(args + ["--dataset", "zsre"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["meta"]["dataset"] == "zsre" and summary["meta"]["cases"] == 1
