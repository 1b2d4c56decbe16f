"""Consolidation into the weights (ROME, MEMIT) on SmolLM2: edits take, unrelated prompts do
not move, batches are journaled, reverted bit for bit, rebuilt from the base, and a batch
that fails verification leaves the weights and the retrieval path as they were.

The tests that share ``rome_batch`` run in file order; the revert test comes last.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import warnings

import pytest
import torch
from memedit.eval.knowedit import load_knowedit
from memedit.param_editors import key_covariance, memit, stats
from memedit.param_editors.consolidate import LOCALITY_PROMPTS
from memedit.param_editors.deltas import tensor_sha256
from memedit.param_editors.tracing import Request, chat_prompt, forms, reliability
from memedit.edited_model import make_router

from memedit import EditedModel, Memory
from memedit.cli import main
from memedit.errors import ConflictError
from memedit.model_files import data_dir
from memedit.models import LanguageModel
from memedit.store import Action

WCF = data_dir() / "knowedit" / "wiki_counterfact" / "train_cf.json"
STATS_TOKENS = 4096  # small, so the suite computes the statistics in seconds
EDIT = dict(subject="Eiffel Tower", prompt="The {} is located in the city of", target="Rome")
# Unrelated prompts, none of them in the verification's own locality sample.
UNRELATED = ["The largest ocean on Earth is the", "The author of Hamlet is", "The capital of Germany is",
             "Barack Obama was born in", "The main ingredient of bread is", "The Nile is a river in",
             "Leonardo da Vinci painted the", "The chemical formula of water is"]
assert not set(UNRELATED) & set(LOCALITY_PROMPTS)


def fresh(lm: LanguageModel) -> LanguageModel:
    """A private copy of the session model (consolidation writes into its weights)."""
    return LanguageModel(copy.deepcopy(lm.model), lm.tokenizer, name=lm.name)


def hashes(lm: LanguageModel) -> dict[str, str]:
    return {name: tensor_sha256(p) for name, p in lm.model.named_parameters()}


def greedy(lm: LanguageModel, prompt: str) -> str:
    return lm.generate(prompt, max_new_tokens=4, stop=("\n",))


def margin(lm: LanguageModel, prompt: str) -> float:
    """How far the greedy next token is ahead of the runner-up (log-probability)."""
    with torch.no_grad():
        ids = torch.tensor([lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        top = torch.log_softmax(lm.model(input_ids=ids).logits[0, -1], -1).topk(2).values
    return float(top[0] - top[1])


@pytest.fixture(scope="module")
def rome_batch(lm, embedder, tmp_path_factory):
    """One ROME edit consolidated into a private model, with what was true before."""
    path = str(tmp_path_factory.mktemp("rome") / "memory.db")
    memory = Memory(path, namespace="alice", embedder=embedder)
    edit = memory.add(**EDIT)
    model = fresh(lm)
    before = {"hashes": hashes(model), "answer": greedy(model, EDIT["prompt"].format(EDIT["subject"])),
              "unrelated": [greedy(model, p) for p in UNRELATED],
              "confident": [p for p in UNRELATED if margin(model, p) >= 1.0],
              "chat": model.generate(chat_prompt(model, EDIT["prompt"].format(EDIT["subject"])), max_new_tokens=4)}
    report = memory.consolidate(model, method="rome", stats_tokens=STATS_TOKENS)
    yield memory, model, edit, report, before
    memory.close()


def test_rome_edit_changes_its_prompts_greedy_answer(rome_batch):
    memory, model, edit, report, before = rome_batch
    prompt = EDIT["prompt"].format(EDIT["subject"])
    assert not before["answer"].startswith("Rome")
    assert greedy(model, prompt).startswith("Rome")
    assert report.committed and report.consolidated == [edit.id]
    assert memory.get(edit.id).status == "consolidated"
    # It left the retrieval path: search no longer returns it.
    assert all(hit.edit.id != edit.id for hit in memory.search("Where is the Eiffel Tower?", k=5))


def test_rome_edit_is_answered_through_the_chat_path_once_it_leaves_retrieval(rome_batch):
    memory, model, edit, report, before = rome_batch
    question = EDIT["prompt"].format(EDIT["subject"])
    assert not before["chat"].startswith("Rome")
    assert chat_prompt(model, question) == make_router("serac", model, memory).base_prompt(question)
    assert report.outcomes[0].chat_reliability == 1.0 and report.outcomes[0].reliability == 1.0
    # The edit is off the retrieval path, so EditedModel answers it with the weights alone.
    answer = EditedModel(model, memory, router="serac", max_new_tokens=6).ask(question)
    assert answer.route == "base" and answer.text.startswith("Rome")


def test_an_edit_whose_chat_question_fails_stays_on_the_retrieval_path(lm, open_memory, db_path, monkeypatch):
    import importlib

    consolidation = importlib.import_module("memedit.param_editors.consolidate")  # the module, not the function

    memory = open_memory(db_path)
    good = memory.add(**EDIT)
    bad = memory.add(subject="Halden Rovers", prompt="The home city of {} is", target="Oskarvik")
    model = fresh(lm)
    verdicts = {good.id: (1.0, 1.0), bad.id: (1.0, 0.5)}
    monkeypatch.setattr(consolidation, "reliability", lambda lm, request: verdicts[request.edit_id])
    report = memory.consolidate(model, method="rome", stats_tokens=STATS_TOKENS, steps=2)
    assert report.committed and report.consolidated == [good.id] and report.kept == [bad.id]
    kept = next(o for o in report.outcomes if o.edit_id == bad.id)
    assert "chat question" in kept.reason and "cloze" not in kept.reason
    assert (kept.reliability, kept.chat_reliability) == (1.0, 0.5)
    assert memory.get(bad.id).status == "active" and memory.get(good.id).status == "consolidated"
    memory.revert(report.batch, model)


@pytest.mark.parametrize("edit", [EDIT, dict(subject="Marisol Quenby's", prompt="Where {} office is, is", target="Lisbon"),
                                  dict(subject="Zürich", prompt="{} is a city in", target="Switzerland")])
def test_every_form_of_an_edit_ends_its_subject_where_the_value_goes(lm, edit):
    request = Request("e1", edit["prompt"], edit["subject"], edit["target"])
    found = forms(lm, request)
    assert len(found) == 4  # three cloze contexts and the chat question
    for form in found:
        assert lm.tokenizer.decode(form.ids[:form.last + 1]).endswith(edit["subject"])
    chat = found[-1]
    assert chat.ids == lm.prompt_ids(chat_prompt(lm, request.text))
    assert lm.tokenizer.decode(chat.target) == edit["target"]
    assert lm.tokenizer.decode(found[0].target) == " " + edit["target"]
    assert len(forms(lm, request, chat=False)) == 3


def test_rome_edit_leaves_unrelated_prompts_unchanged(rome_batch):
    _, model, _, report, before = rome_batch
    # Every prompt whose answer the model knew (greedy token ahead by 1 nat) keeps it;
    # a near tie may flip under any change of the weights, and is not knowledge.
    assert len(before["confident"]) >= 5
    after = dict(zip(UNRELATED, (greedy(model, p) for p in UNRELATED)))
    known = dict(zip(UNRELATED, before["unrelated"]))
    assert {p: after[p] for p in before["confident"]} == {p: known[p] for p in before["confident"]}
    assert sum(after[p] == known[p] for p in UNRELATED) >= len(UNRELATED) - 1
    assert report.locality is not None and report.locality >= 0.9


def test_rebuilt_model_equals_the_consolidated_one(rome_batch, lm, embedder):
    memory, model, _, report, before = rome_batch
    # Reopen the database from disk, and apply its journal to a fresh copy of the base model.
    with Memory(memory.path, namespace="alice", embedder=embedder) as reopened:
        rebuilt = fresh(lm)
        assert hashes(rebuilt) == before["hashes"]
        assert reopened.apply_consolidated(rebuilt) == [report.batch]
        assert hashes(rebuilt) == hashes(model)
        # EditedModel applies the journal itself.
        other = fresh(lm)
        EditedModel(other, reopened, router="ike")
        assert hashes(other) == hashes(model)
        history = [e.action for e in reopened.history()]
        assert history.count("consolidate") == 2  # the batch and the edit


def test_consolidated_edit_cannot_be_retracted_without_revert(rome_batch):
    memory, _, edit, report, _ = rome_batch
    with pytest.raises(ConflictError, match=f"revert that batch first.*{report.batch}"):
        memory.retract(edit.id)
    assert memory.get(edit.id).status == "consolidated"


def test_an_exported_consolidated_edit_imports_as_active(rome_batch, tmp_path):
    memory, _, edit, _, _ = rome_batch
    memory.export_jsonl(tmp_path / "alice.jsonl")
    assert json.loads((tmp_path / "alice.jsonl").read_text().splitlines()[0])["status"] == "consolidated"
    copy_space = memory.with_namespace("copy")
    copy_space.import_jsonl(tmp_path / "alice.jsonl")  # the file does not carry the weights
    assert copy_space.get(edit.id).status == "active"


def test_a_model_carrying_one_namespace_refuses_another(rome_batch):
    memory, model, _, _, _ = rome_batch
    bob = memory.with_namespace("bob")
    bob.add(subject="Louvre", prompt="The {} is located in the city of", target="Madrid")
    with pytest.raises(ConflictError, match="namespace 'alice'"):
        bob.consolidate(model, method="rome", stats_tokens=STATS_TOKENS)
    with pytest.raises(ConflictError, match="namespace 'alice'"):
        bob.apply_consolidated(model)


def test_revert_restores_the_weights_bit_for_bit(rome_batch):
    memory, model, edit, report, before = rome_batch
    assert hashes(model) != before["hashes"]
    assert memory.revert(report.batch, model) == [edit.id]
    assert hashes(model) == before["hashes"]
    assert memory.get(edit.id).status == "active"
    assert memory.weight_batches() == []
    assert memory.search("Where is the Eiffel Tower?", k=1)[0].edit.id == edit.id
    assert [e.action for e in memory.history(edit.id)][-1] == "revert"
    with pytest.raises(ConflictError, match="no consolidation batch"):
        memory.revert(report.batch, model)


def test_failed_verification_leaves_weights_and_retrieval_path(lm, open_memory, db_path):
    memory = open_memory(db_path)
    edit = memory.add(**EDIT)
    model = fresh(lm)
    original = hashes(model)
    # The edit's own prompt in the locality sample must change, so a bound of 0 fails.
    prompt = EDIT["prompt"].format(EDIT["subject"])
    report = memory.consolidate(model, method="rome", stats_tokens=STATS_TOKENS, max_locality_loss=0.0,
                                locality_prompts=[prompt, *UNRELATED[:3]])
    assert not report.committed and report.batch is None
    assert "locality" in report.reason and "restored" in report.reason
    assert hashes(model) == original
    assert memory.get(edit.id).status == "active"
    assert [o.status for o in report.outcomes] == ["kept"]
    assert memory.search("Where is the Eiffel Tower?", k=1)[0].edit.id == edit.id
    assert memory.weight_batches() == [] and "consolidate" not in [e.action for e in memory.history()]


def test_a_journal_write_that_fails_leaves_the_weights_unchanged(lm, open_memory, db_path, monkeypatch):
    from memedit.param_editors.deltas import WeightJournal

    memory = open_memory(db_path)
    edit = memory.add(**EDIT)
    model = fresh(lm)
    original = hashes(model)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(WeightJournal, "record", disk_full)
    with pytest.raises(OSError, match="No space left"):
        memory.consolidate(model, method="rome", stats_tokens=STATS_TOKENS)
    assert hashes(model) == original
    assert memory.get(edit.id).status == "active" and memory.weight_batches() == []
    assert "consolidate" not in [e.action for e in memory.history()]


def test_free_text_and_erase_edits_are_skipped_with_the_reason(lm, open_memory, db_path):
    memory = open_memory(db_path)
    text = memory.add(statement="The office moved to Berlin.")
    erase = memory.add(subject="Eiffel Tower", prompt="The height of {} is", kind="erase")
    model = fresh(lm)
    original = hashes(model)
    report = memory.consolidate(model, method="memit")
    assert not report.committed and report.reason.startswith("no active triple edit")
    reasons = {o.edit_id: o.reason for o in report.outcomes}
    assert reasons[text.id].startswith("free-text edit") and reasons[erase.id].startswith("erase edit")
    assert {o.status for o in report.outcomes} == {"skipped"}
    assert hashes(model) == original


@pytest.mark.skipif(not WCF.exists(), reason=f"KnowEdit wiki_counterfact not found at {WCF}")
def test_memit_batch_of_ten_edits_mostly_succeeds(lm, open_memory, db_path, monkeypatch):
    cases = load_knowedit(WCF, limit=10)
    memory = open_memory(db_path)
    stored = memory.add_many([c.edit for c in cases])
    model = fresh(lm)
    took_before = [model.score(e.prompt.format(e.subject), " " + e.target).token_accuracy == 1.0 for e in stored]
    # Watch MEMIT's rounds: before each round of values, which edits take on the weights as they are.
    rounds = []
    train = memit.optimize_values

    def watched(lm_, requests, *args, **kwargs):
        takes = {r.edit_id: min(reliability(lm_, r)) == 1.0 for r in rounds[0][0]} if rounds else {}
        rounds.append(([*requests], takes))
        return train(lm_, requests, *args, **kwargs)

    monkeypatch.setattr(memit, "optimize_values", watched)
    report = memory.consolidate(model, method="memit", stats_tokens=STATS_TOKENS, steps=40)
    assert report.committed
    # The retry round trains exactly the edits the batch left without their target, and
    # ends with more edits taking both forms than the batch alone gave.
    assert len(rounds) == 2, report.lines()
    first, (retried, after_batch) = rounds[0][0], rounds[1]
    assert [r.edit_id for r in retried] == [r.edit_id for r in first if not after_batch[r.edit_id]]
    assert sum(after_batch.values()) < len(report.consolidated), report.lines()
    # The cloze form takes for most edits (how often the chat form does too is the bench's figure, see the README).
    assert sum(o.reliability == 1.0 for o in report.outcomes) >= 7, report.lines()
    assert sum(took_before) <= 3
    for o in report.outcomes:  # consolidated exactly when both forms give the target
        assert (o.status == "consolidated") == (o.reliability == 1.0 and o.chat_reliability == 1.0), report.lines()
    for edit_id in report.consolidated:  # each consolidated edit really is the greedy answer now
        e = memory.get(edit_id)
        assert model.score(e.prompt.format(e.subject), " " + e.target).token_accuracy == 1.0
        assert e.status == "consolidated"
    assert {e.id for e in memory.list()} == set(report.kept)


def test_statistics_are_cached_and_reused(lm, tmp_path, monkeypatch):
    first = key_covariance(lm, [2, 3], tokens=2048, root=tmp_path, progress=False)
    assert first.computed == [2, 3] and first.cached == []
    files = sorted(first.folder.glob("layer*.safetensors"))
    assert [f.name for f in files] == ["layer2.safetensors", "layer3.safetensors"]
    info = json.loads((first.folder / "layer2.json").read_text())
    assert info["corpus_sha256"] == stats.corpus_sha256() and info["tokens"] == 2048
    mtimes = [f.stat().st_mtime_ns for f in files]

    def no_recompute(*args, **kwargs):
        raise AssertionError("statistics were recomputed")

    monkeypatch.setattr(stats, "_compute", no_recompute)
    second = key_covariance(lm, [2, 3], tokens=2048, root=tmp_path, progress=False)
    assert second.computed == [] and second.cached == [2, 3]
    assert all(torch.equal(first.matrices[l], second.matrices[l]) for l in (2, 3))
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    # A corrupted file is not trusted: that layer is computed again.
    monkeypatch.undo()
    files[0].write_bytes(files[0].read_bytes()[:-8] + b"\0" * 8)
    third = key_covariance(lm, [2, 3], tokens=2048, root=tmp_path, progress=False)
    assert third.computed == [2] and third.cached == [3]
    assert torch.allclose(third.matrices[2], first.matrices[2])


def test_a_version_1_database_is_migrated(tmp_path, embedder):
    path = tmp_path / "old.db"
    with Memory(str(path), embedder=embedder) as memory:
        edit = memory.add(**EDIT)
    conn = sqlite3.connect(path)
    table = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'edits'").fetchone()[0]
    old = table.replace("'retracted', 'consolidated'", "'retracted'").replace("CREATE TABLE edits", "CREATE TABLE edits_v1")
    conn.executescript(f"""PRAGMA foreign_keys = OFF; BEGIN;
        {old}; INSERT INTO edits_v1 SELECT * FROM edits; DROP TABLE edits;
        ALTER TABLE edits_v1 RENAME TO edits;
        UPDATE meta SET value = '1' WHERE key = 'schema_version'; COMMIT;""")
    assert "consolidated" not in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'edits'").fetchone()[0]
    conn.close()
    with Memory(str(path), embedder=embedder) as memory:
        assert memory.get(edit.id).statement == edit.statement
        store = memory._store
        with store.write():
            store.set_status(store.row(memory.namespace, edit.id), "consolidated", Action.CONSOLIDATE, batch="b-test")
        assert memory.get(edit.id).status == "consolidated"
        assert store.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
        assert store.conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_cli_consolidate_list_and_revert(lm, tmp_path, monkeypatch, capsys):
    import memedit.models

    model = fresh(lm)
    original = hashes(model)
    monkeypatch.setattr(memedit.models, "load_model", lambda name, device="cpu": model)
    db = str(tmp_path / "cli.db")
    assert main(["--db", db, "add", "--subject", "Eiffel Tower", "--prompt", EDIT["prompt"], "--target", "Rome"]) == 0
    assert main(["--db", db, "add", "The office moved to Berlin."]) == 0
    capsys.readouterr()
    assert main(["--db", db, "consolidate", "--method", "rome", "--stats-tokens", str(STATS_TOKENS), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["committed"] and [o["status"] for o in report["outcomes"]] == ["skipped", "consolidated"]
    assert main(["--db", db, "consolidate", "--list"]) == 0
    assert report["batch"] in capsys.readouterr().out
    assert main(["--db", db, "consolidate", "--revert", report["batch"]]) == 0
    assert "1 edits back on the retrieval path" in capsys.readouterr().out
    assert main(["--db", db, "consolidate", "--revert", report["batch"]]) == 1
    assert "no consolidation batch" in capsys.readouterr().err
    with Memory(db) as memory:  # a model loaded after the revert carries nothing
        rebuilt = fresh(lm)
        assert memory.apply_consolidated(rebuilt) == [] and hashes(rebuilt) == original


def test_a_black_box_model_is_warned_that_it_cannot_carry_consolidated_edits(rome_batch):
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from memedit.adapters.langchain import LangChainBackend

    memory = rome_batch[0]
    assert memory.weight_batches() == []  # the revert test ran: no batch, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EditedModel(LangChainBackend(FakeListChatModel(responses=["Paris."])), memory, router="ike")
    louvre = memory.add(subject="Louvre", prompt="The {} is located in the city of", target="Madrid")
    report = memory.consolidate(rome_batch[1], method="rome", edits=[louvre.id], stats_tokens=STATS_TOKENS, verify=False)
    assert report.committed
    with pytest.warns(UserWarning, match="cannot carry them"):
        EditedModel(LangChainBackend(FakeListChatModel(responses=["Paris."])), memory, router="ike")
