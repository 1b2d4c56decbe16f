"""MQuAKE: the loader on MQuAKE-hard, the scoring rules, batching by k, the resumable runner,
and the MeLLo and PokeMQA chains on SmolLM2 (mechanics, not accuracy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from memedit.eval.knowedit import DataError
from memedit.eval.mquake import batches, chain_matches, load_mquake, score_case
from memedit.eval.mquake_runner import (
    RunMismatch,
    classify_failure,
    evaluate_mquake,
    read_done,
)
from memedit.retrievers.mello import MeLLoRouter
from memedit.retrievers.pokemqa import PokeMQARouter
from memedit.retrievers.scope import EmbeddingScope

from memedit.model_files import data_dir

HARD = data_dir() / "mquake-hard" / "MQuAKE-hard.json"


@pytest.fixture(scope="module")
def cases():
    return load_mquake(HARD)


def write_json(tmp_path, data) -> Path:
    path = tmp_path / "mquake.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# -- loader -------------------------------------------------------------------------------
def test_loader_reads_mquake_hard(cases):
    assert len(cases) == 429 and len({c.case_id for c in cases}) == 429
    assert all(len(c.edits) == 4 and len(c.new_hops) == 4 and len(c.questions) == 3 for c in cases)
    raw = json.loads(HARD.read_text())[0]
    first = cases[0]
    rewrite = raw["requested_rewrite"][1]
    edit = first.edits[1]
    assert (edit.subject, edit.prompt, edit.target, edit.old_target) == (
        rewrite["subject"], rewrite["prompt"], rewrite["target_new"]["str"], rewrite["target_true"]["str"])
    assert edit.kind == "modify" and edit.source == f"mquake:{raw['case_id']}"
    assert first.new_answers == (raw["new_answer"], *raw["new_answer_alias"])
    assert first.new_hops[2].question == raw["new_single_hops"][2]["question"]
    assert first.edit_for_hop() == [0, 1, 2, 3]  # every hop of MQuAKE-hard is edited


def test_loader_errors_name_the_case_and_field(tmp_path, cases):
    raw = json.loads(HARD.read_text())[:2]
    broken = json.loads(json.dumps(raw))
    broken[1]["requested_rewrite"][2]["prompt"] = "The capital of France is"
    with pytest.raises(DataError, match=r"case 1 \(case_id .*\): requested_rewrite\[2\]\.prompt: must contain \{\}"):
        load_mquake(write_json(tmp_path, broken))
    del broken[1]["requested_rewrite"]
    with pytest.raises(DataError, match="requested_rewrite: must be a non-empty list"):
        load_mquake(write_json(tmp_path, broken))
    with pytest.raises(DataError, match="must hold a JSON list"):
        load_mquake(write_json(tmp_path, {"cases": raw}))
    with pytest.raises(DataError, match="no such file"):
        load_mquake(tmp_path / "missing.json")
    assert [c.case_id for c in load_mquake(write_json(tmp_path, raw), limit=1)] == [cases[0].case_id]


# -- scoring and batching -------------------------------------------------------------------
def test_scoring_accepts_aliases_and_any_question(cases):
    case = cases[0]  # new answer Arabic, alias "Arabic language"; old answer English
    alias = case.new_answers[-1]
    assert score_case(case, [f"It is {alias}."])["correct"]
    assert score_case(case, ["Hindi", "Urdu", alias])["correct"]          # any of the questions
    assert not score_case(case, ["Hindi", "Urdu", "Bengali"])["correct"]
    assert score_case(case, [case.old_answers[0]]) == {"correct": False, "hop_correct": False, "old": True}


def test_hop_wise_needs_every_intermediate_answer(cases):
    case = cases[0]
    gold = [h.answers[0] for h in case.new_hops]
    assert chain_matches(gold, case.new_hops) and not chain_matches(gold[:3], case.new_hops)
    wrong_middle = gold[:1] + ["Paul McCartney"] + gold[2:]
    final = case.new_answers[0]
    assert score_case(case, [final], [gold])["hop_correct"]
    assert not score_case(case, [final], [wrong_middle])["hop_correct"]
    assert not score_case(case, ["Hindi"], [gold])["hop_correct"]        # the answer itself must be right


def test_batches_of_k(cases):
    ten = cases[:10]
    assert [len(b) for b in batches(ten, 3)] == [3, 3, 3, 1]
    assert [len(b) for b in batches(ten, "all")] == [10] and batches(ten, "4")[0] == ten[:4]
    assert [c.case_id for b in batches(ten, 1) for c in b] == [c.case_id for c in ten]
    for bad in (0, -1, "some", 2.5):
        with pytest.raises(ValueError, match="k must be"):
            batches(ten, bad)


# -- the chains on SmolLM2 ------------------------------------------------------------------
@pytest.fixture
def case_memory(open_memory, db_path, cases):
    memory = open_memory(db_path)
    memory.add_many(cases[0].edits)
    return memory


def hops_of(answer):
    return [s for s in answer.trace if s["step"] == "hop"]


def transcript_of(answer) -> str:
    return next(s["text"] for s in answer.trace if s["step"] == "transcript")


@pytest.mark.slow
def test_pokemqa_detector_hit_puts_the_edit_in_the_chain_and_a_miss_does_not(lm, case_memory, cases):
    question = cases[0].questions[0]
    always = PokeMQARouter(lm, case_memory, detector=EmbeddingScope(case_memory.embedder, threshold=-1.0),
                           first_threshold=-1.0, max_hops=2)
    hit = always.answer(question)
    hops = hops_of(hit)
    assert hops and all(h["in_scope"] and h["edit"] for h in hops)
    body = transcript_of(hit)
    for h in hops:
        assert f'Memory fact: {json.dumps(h["edit"]["statement"])}' in body
    assert [e.id for e in hit.edits_used] == list(dict.fromkeys(h["edit"]["id"] for h in hops))

    never = PokeMQARouter(lm, case_memory, detector=EmbeddingScope(case_memory.embedder, threshold=2.0),
                          first_threshold=-1.0, max_hops=2)
    miss = never.answer(question)
    assert hops_of(miss) and all(not h["in_scope"] and h["edit"] is None and h["candidates"] for h in hops_of(miss))
    assert "Memory fact:" not in transcript_of(miss) and miss.edits_used == []


@pytest.mark.slow
def test_mello_trace_records_every_hop(lm, case_memory, cases):
    router = MeLLoRouter(lm, case_memory, max_hops=3)
    answer = router.answer(cases[0].questions[0])
    hops = hops_of(answer)
    chain = next(s["answers"] for s in answer.trace if s["step"] == "chain_answers")
    assert 1 <= len(hops) <= 3 and [h["n"] for h in hops] == list(range(1, len(hops) + 1))
    assert chain == [h["answer"] for h in hops]
    for h in hops:
        assert h["subquestion"] and "tentative" in h and h["edit"]["statement"] in transcript_of(answer)
        assert h["check"].startswith("the fact ") and isinstance(h["contradicts"], bool)
    assert answer.trace[-1]["step"] == "transcript" and any(s["step"] == "final" for s in answer.trace)
    assert router.prefix.count("Question:") == 3  # the worked examples are the cached prefix


@pytest.mark.slow
def test_an_erase_hit_refuses_the_whole_question(lm, open_memory, db_path):
    memory = open_memory(db_path)
    erase = memory.add(subject="Hey Jude", prompt="{} was performed by", kind="erase")
    router = PokeMQARouter(lm, memory, detector=EmbeddingScope(memory.embedder, threshold=0.5), first_threshold=0.3)
    answer = router.answer("Who performed Hey Jude?")
    assert answer.route == "erase" and answer.text == router.refusal and [e.id for e in answer.edits_used] == [erase.id]


def test_failures_are_named_from_the_trace(case_memory, cases):
    case = cases[0]
    statements = [e.statement for e in case.edits]
    gold = [h.answers[0] for h in case.new_hops]
    chain = [{"step": "chain"}]

    def hop(answer, statement=None, **decision):
        return {"step": "hop", "answer": answer, "edit": {"statement": statement} if statement else None, **decision}

    assert classify_failure(case, chain + [hop(gold[0], statements[0], contradicts=True)], case_memory) == "decomposition"
    assert classify_failure(case, chain + [hop("The Beatles", statements[0], contradicts=False)], case_memory) == "contradiction check"
    rejected = hop("The Beatles", None, in_scope=False, candidates=[{"statement": statements[0]}])
    assert classify_failure(case, chain + [rejected], case_memory) == "scope"

    class Detector:  # what the router's detector says of the gold single-hop question
        def __init__(self, statement):
            self.statement = statement

        def decide(self, question):
            assert question == case.new_hops[0].question
            return SimpleNamespace(best=SimpleNamespace(statement=self.statement) if self.statement else None)

    # the gold question would have reached the edit: the model's sub-question asked something else
    assert classify_failure(case, chain + [rejected], case_memory, Detector(statements[0])) == "decomposition"
    assert classify_failure(case, chain + [rejected], case_memory, Detector(None)) == "scope"
    assert classify_failure(case, chain + [rejected], case_memory, Detector(statements[1])) == "scope"
    assert classify_failure(case, chain + [hop("Oz", statements[3], in_scope=True)], case_memory) == "wrong edit"
    all_right = [hop(a, s, in_scope=True) for a, s in zip(gold, statements)]
    assert classify_failure(case, chain + all_right, case_memory) == "final answer"
    assert classify_failure(case, [{"step": "retrieve"}], case_memory) == "single step"


# -- the runner ---------------------------------------------------------------------------
class CountingRouter:
    """A real router (IKE on SmolLM2), counting the questions it answers."""

    def __init__(self, router, log):
        self.router, self.log, self.model = router, log, router.model

    def answer_steps(self, question):
        self.log.append(question)
        return self.router.answer_steps(question)


@pytest.mark.slow
def test_runner_batches_resumes_and_refuses_other_settings(lm, embedder, cases, tmp_path):
    from memedit import Memory
    from memedit.edited_model import make_router

    asked, sizes = [], []

    def make(memory):
        sizes.append(memory.stats()["edits"])
        return CountingRouter(make_router("ike", lm, memory), asked)

    def run(limit, **kwargs):
        return evaluate_mquake(cases[:5], make, 2, tmp_path / "run", limit=limit, questions=2, progress=False,
                               settings={"router": "ike"}, open_memory=lambda p: Memory(p, embedder=embedder), **kwargs)

    summary = run(3)
    assert summary["cases"] == 3 and sizes == [8, 8] and len(asked) == 6  # batches of 2 cases = 8 edits each
    lines = (tmp_path / "run" / "cases.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    assert record["batch"] == 1 and len(record["questions"]) == 2 and record["questions"][0]["trace"]
    # a crash mid-line: the half line is dropped and that case is asked again; finished ones are not
    (tmp_path / "run" / "cases.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    asked.clear()
    summary = run(4)
    assert summary["cases"] == 4 and len(asked) == 4  # cases 3 and 4, two questions each
    assert [r["case_id"] for r in read_done(tmp_path / "run" / "cases.jsonl")] == [c.case_id for c in cases[:4]]
    with pytest.raises(RunMismatch, match="k: '2' -> '1'"):
        evaluate_mquake(cases[:5], make, 1, tmp_path / "run", limit=4, settings={"router": "ike"}, progress=False)
    # --skip: cases held out of development are asked on their own; the batches stay those of the whole file
    asked.clear(), sizes.clear()
    summary = evaluate_mquake(cases[:5], make, 2, tmp_path / "held-out", limit=1, skip=3, progress=False,
                              settings={"router": "ike"}, open_memory=lambda p: Memory(p, embedder=embedder))
    assert summary["cases"] == 1 and len(asked) == 1 and sizes == [8]
    assert [r["case_id"] for r in read_done(tmp_path / "held-out" / "cases.jsonl")] == [cases[3].case_id]
    assert "from case 4" in (tmp_path / "held-out" / "report.md").read_text()
    with pytest.raises(ValueError, match="the file has 5"):
        evaluate_mquake(cases[:5], make, 2, tmp_path / "none", skip=5, progress=False)
    with pytest.raises(ValueError, match="skip"):
        evaluate_mquake(cases[:5], make, 2, tmp_path / "none", skip=-1, progress=False)


@pytest.mark.slow
def test_cli_runs_two_k_values_and_plots(tmp_path):
    out = tmp_path / "mq"

    def cmd(*k):
        return [sys.executable, "-m", "memedit.cli", "eval", "mquake", "--data", str(HARD), "--router", "pokemqa",
                "--detector", "embedding", "--k", *k, "--limit", "1", "--max-hops", "2", "--out", str(out),
                "--threads", "1", "--no-progress"]

    done = subprocess.run(cmd("1", "all"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == ["pokemqa-smollm2-135m-k1", "pokemqa-smollm2-135m-kall"]
    summary = json.loads((out / runs[1] / "summary.json").read_text())
    assert summary["meta"]["k"] == "all" and summary["summary"]["cases"] == 1
    assert (out / "accuracy_vs_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "summary.md").read_text().count("| pokemqa |") == 2
    bad = subprocess.run(cmd("1", "zero"), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "k must be a positive whole number or 'all'" in bad.stderr
