"""The fallback consolidation policy: which edits it chooses (by age, beyond a count, a batch
at a time), its errors, ``Memory.consolidate(policy=)``, ``memedit consolidate --auto``, and
ChatSession's background consolidation on a private copy of SmolLM2."""

from __future__ import annotations

import copy
import importlib
import logging
import math
import threading
from datetime import datetime, timedelta, timezone

import pytest

from memedit import EditedModel, Memory
from memedit.chat import ChatSession
from memedit.cli import main
from memedit.errors import ArgumentError
from memedit.models import LanguageModel, load_model
from memedit.param_editors import ConsolidationPolicy, ConsolidationReport, select
from memedit.param_editors.deltas import tensor_sha256

consolidation = importlib.import_module("memedit.param_editors.consolidate")  # the module (the package exports the function)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
STATS_TOKENS = 4096  # the statistics tests/test_consolidate.py computes (and caches) too
EIFFEL = dict(subject="Eiffel Tower", prompt="The {} is located in the city of", target="Rome")
# ROME on cached statistics, without verification: these tests are about which edits are
# written and where, not about whether the editor's answer takes (tests/test_consolidate.py).
FAST = {"method": "rome", "stats_tokens": STATS_TOKENS, "verify": False}


def ago(days: float) -> str:
    return (NOW - timedelta(days=days)).isoformat()


def triple(memory, name: str, days: float, **fields):
    return memory.add(subject=name, prompt="{} is located in", target="Oslo", created_at=ago(days), **fields)


def ids(edits) -> list[str]:
    return [e.id for e in edits]


def hashes(lm: LanguageModel) -> dict[str, str]:
    return {name: tensor_sha256(p) for name, p in lm.model.named_parameters()}


def private_copy(lm: LanguageModel) -> LanguageModel:
    return LanguageModel(copy.deepcopy(lm.model), lm.tokenizer, name=lm.name)


# -- selection ----------------------------------------------------------------------------


def test_age_chooses_the_edits_created_longer_ago_oldest_first(memory):
    middle = triple(memory, "B", 5)
    old = triple(memory, "A", 10)  # added later, created earlier
    triple(memory, "C", 1)
    for older_than in (timedelta(days=3), 3 * 86400, "3d", "72h"):
        assert ids(select(memory, ConsolidationPolicy(older_than=older_than), now=NOW)) == [old.id, middle.id]
    assert select(memory, {"older_than": "30d"}, now=NOW) == []
    assert ConsolidationPolicy(older_than="90s").older_than == timedelta(seconds=90)


def test_beyond_keeps_the_newest_active_edits_and_chooses_the_older(memory):
    edits = [triple(memory, name, days) for name, days in (("A", 9), ("B", 8), ("C", 7))]
    memory.add(statement="The office moved to Berlin.", created_at=ago(6))  # counts, is never chosen
    memory.add(statement="The lab moved to Bonn.", created_at=ago(5))
    assert ids(select(memory, ConsolidationPolicy(beyond=3), now=NOW)) == ids(edits[:2])
    assert ids(select(memory, ConsolidationPolicy(beyond=0), now=NOW)) == ids(edits)
    assert select(memory, ConsolidationPolicy(beyond=5), now=NOW) == []
    # Either rule chooses: beyond picks A, the age picks A and B.
    assert ids(select(memory, ConsolidationPolicy(beyond=4, older_than="7.5d"), now=NOW)) == ids(edits[:2])


def test_batch_size_caps_a_call_at_the_oldest(memory):
    edits = [triple(memory, f"Place {i}", 20 - i) for i in range(5)]
    assert ids(select(memory, ConsolidationPolicy(older_than=0, batch_size=2), now=NOW)) == ids(edits[:2])
    assert ids(select(memory, ConsolidationPolicy(batch_size=3), now=NOW)) == ids(edits[:3])  # no rule: every edit
    assert len(select(memory, ConsolidationPolicy(), now=NOW)) == 5


def test_free_text_erase_superseded_and_retracted_edits_are_never_chosen(memory):
    memory.add(statement="The office moved to Berlin.", created_at=ago(30))
    memory.add(subject="Louvre", prompt="The height of {} is", kind="erase", created_at=ago(30))
    old = triple(memory, "Atlantis", 30)
    newer = memory.add(subject="Atlantis", prompt="{} is located in", target="Crete", created_at=ago(20))
    retracted = triple(memory, "Mu", 30)
    memory.retract(retracted.id)
    assert memory.get(old.id).status == "superseded"
    assert ids(select(memory, ConsolidationPolicy(older_than=0), now=NOW)) == [newer.id]
    assert ids(select(memory, ConsolidationPolicy(beyond=0), now=NOW)) == [newer.id]


@pytest.mark.parametrize("fields, field", [
    ({"older_than": -1}, "older_than"), ({"older_than": "7 days"}, "older_than"), ({"older_than": True}, "older_than"),
    ({"older_than": math.nan}, "older_than"), ({"older_than": timedelta(seconds=-5)}, "older_than"),
    ({"beyond": -1}, "beyond"), ({"beyond": 2.5}, "beyond"), ({"beyond": True}, "beyond"),
    ({"batch_size": 0}, "batch_size"), ({"batch_size": "10"}, "batch_size"),
])
def test_bad_policy_values_name_the_field_and_the_fix(fields, field):
    with pytest.raises(ArgumentError, match=rf"^{field} must be") as err:
        ConsolidationPolicy(**fields)
    assert err.value.name == field


def test_a_policy_given_as_a_dict_is_checked_too(memory):
    with pytest.raises(ArgumentError, match="unknown field.*'age'.*older_than, beyond, batch_size"):
        select(memory, {"age": 3})
    with pytest.raises(ArgumentError, match="policy must be a ConsolidationPolicy or a dict"):
        select(memory, [("beyond", 3)])
    with pytest.raises(ArgumentError, match="^beyond must be"):
        memory.consolidate(None, policy={"beyond": -2})


def test_edits_and_policy_together_are_refused(memory):
    edit = triple(memory, "A", 10)
    with pytest.raises(ValueError, match="policy and edits were both given"):
        memory.consolidate(None, edits=[edit.id], policy=ConsolidationPolicy(beyond=0))


def test_a_policy_that_matches_nothing_writes_nothing_and_says_so(lm, memory):
    now = datetime.now(timezone.utc)
    edit = memory.add(subject="A", prompt="{} is located in", target="Oslo", created_at=(now - timedelta(days=1)).isoformat())
    memory.add(statement="The office moved to Berlin.", created_at=(now - timedelta(days=90)).isoformat())
    model = private_copy(lm)
    before = hashes(model)
    for policy in (ConsolidationPolicy(older_than="7d", beyond=5), {"older_than": 7 * 86400, "beyond": 5}):
        report = memory.consolidate(model, method="rome", policy=policy)
        assert isinstance(report, ConsolidationReport) and not report.committed and report.batch is None
        assert report.reason.startswith("the policy (created more than 7d ago or older than the newest 5 active edits, "
                                        "at most 50 a batch) matched no edit")
        assert report.lines()[0].startswith("nothing written (rome): the policy") and report.outcomes == []
    assert hashes(model) == before
    assert memory.get(edit.id).status == "active" and memory.weight_batches() == []
    assert "consolidate" not in [e.action for e in memory.history()]


# -- memedit consolidate --auto -------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--auto"], "--auto needs a policy: give --older-than AGE (such as 7d), --beyond N and/or --batch-size N"),
    (["--older-than", "7d"], "--older-than chooses edits for --auto; add --auto"),
    (["--auto", "--older-than", "7 days"], "--older-than must be a number with a unit, d, h, m or s"),
    (["--auto", "--beyond", "-1"], "--beyond must be a whole number of 0 or more, got -1"),
    (["--auto", "--batch-size", "0"], "--batch-size must be a whole number of 1 or more, got 0"),
    (["--auto", "--beyond", "1", "--edit", "abc"], "--auto and --edit were both given"),
])
def test_cli_auto_errors_name_the_flags(tmp_path, capsys, flags, message):
    assert main(["--db", str(tmp_path / "cli.db"), "consolidate", *flags]) == 1
    assert message in capsys.readouterr().err


def test_cli_auto_consolidates_what_the_policy_chooses(lm, embedder, open_memory, tmp_path, monkeypatch, capsys):
    import memedit.models

    db = str(tmp_path / "cli.db")
    with Memory(db, embedder=embedder) as memory:
        old = memory.add(**EIFFEL, created_at=(datetime.now(timezone.utc) - timedelta(days=30)).isoformat())
        new = memory.add(subject="Louvre", prompt="The {} is located in the city of", target="Madrid")

    def no_model(*args, **kwargs):
        raise AssertionError("a policy that matches nothing needs no model")

    monkeypatch.setattr(memedit.models, "load_model", no_model)
    assert main(["--db", db, "consolidate", "--auto", "--older-than", "60d", "--method", "rome"]) == 0
    assert capsys.readouterr().out.startswith("nothing written (rome): the policy (created more than 60d ago, at most 50 a "
                                              "batch) matched no edit")

    model = private_copy(lm)
    monkeypatch.setattr(memedit.models, "load_model", lambda name, device="cpu": model)
    assert main(["--db", db, "consolidate", "--auto", "--older-than", "7d", "--batch-size", "5", "--method", "rome",
                 "--stats-tokens", str(STATS_TOKENS), "--no-verify"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "1 consolidated" in out[0] and any(line.strip().startswith(f"{old.id}  consolidated") for line in out)
    assert new.id not in "\n".join(out)
    reopened = open_memory(db)
    assert reopened.get(old.id).status == "consolidated" and reopened.get(new.id).status == "active"


# -- ChatSession: consolidation in the background --------------------------------------------


def test_a_black_box_model_is_refused_background_consolidation(memory):
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from memedit.adapters.langchain import LangChainBackend

    edited = EditedModel(LangChainBackend(FakeListChatModel(responses=["Paris."])), memory, router="ike")
    with pytest.raises(ArgumentError, match="consolidate_policy needs a local model.*black box"):
        ChatSession(edited, consolidate_policy=ConsolidationPolicy(beyond=10))
    assert ChatSession(edited).start_consolidation() is False  # no policy, nothing to start


def test_bad_background_settings_are_named(lm, memory):
    edited = EditedModel(lm, memory, router="ike")
    with pytest.raises(ArgumentError, match="^beyond must be"):
        ChatSession(edited, consolidate_policy={"beyond": -1})
    with pytest.raises(ArgumentError, match="consolidate_options must not set edits"):
        ChatSession(edited, consolidate_policy={"beyond": 1}, consolidate_options={"edits": ["x"]})


def test_background_consolidation_updates_the_answering_model(lm, open_memory, db_path):
    memory = open_memory(db_path)
    old = memory.add(**EIFFEL, created_at=(datetime.now(timezone.utc) - timedelta(days=30)).isoformat())
    model = load_model("smollm2-135m", fresh=True)  # the session's own model: the shared one stays base
    base = hashes(model)
    prompt = EIFFEL["prompt"].format(EIFFEL["subject"])
    rome_before = model.score(prompt, " Rome").logprob
    session = ChatSession(EditedModel(model, memory, router="ike", max_new_tokens=4),
                          consolidate_policy=ConsolidationPolicy(older_than="7d"), consolidate_options=FAST)
    turn = session.send("Remember that the office closes at 5 pm.")
    assert turn.route == "remember"
    report = session.wait_consolidation(timeout=900)
    assert isinstance(report, ConsolidationReport), report
    assert report.committed and report.consolidated == [old.id], report.lines()
    assert memory.get(old.id).status == "consolidated" and memory.get(turn.learned.id).status == "active"
    # The answering model carries exactly the journaled batch: the base rebuilt from the journal.
    rebuilt = private_copy(lm)
    assert hashes(rebuilt) == base
    assert memory.apply_consolidated(rebuilt) == [report.batch]
    after = hashes(model)
    assert after != base and after == hashes(rebuilt)
    assert model.score(prompt, " Rome").logprob > rome_before + 1.0  # the session's answers come from the new weights
    # The next turn's job finds nothing left to choose and loads no model.
    session.send("Remember that the lab closes at 6 pm.")
    assert "matched no edit" in session.wait_consolidation(timeout=60).reason
    assert hashes(model) == after


def test_a_failed_background_job_keeps_the_edits_and_never_blocks_or_overlaps(lm, open_memory, db_path, monkeypatch,
                                                                               caplog):
    memory = open_memory(db_path)
    old = memory.add(**EIFFEL, created_at="2020-01-01T00:00:00+00:00")
    model = private_copy(lm)
    base = hashes(model)
    started, release, given = threading.Event(), threading.Event(), []

    def exploding_editor(lm, requests, settings, matrices, progress=False):
        given.append(lm)
        started.set()
        release.wait(timeout=300)
        raise RuntimeError("the editor exploded")

    monkeypatch.setitem(consolidation.EDITORS, "rome", exploding_editor)
    session = ChatSession(EditedModel(model, memory, router="ike", max_new_tokens=4),
                          consolidate_policy={"beyond": 0}, consolidate_options=FAST)
    session.send("Remember that the office closes at 5 pm.")
    assert started.wait(timeout=300), session.last_consolidation
    # While the job runs, turns are answered (retrieval included) and start no second job.
    assert session.consolidating
    assert session.send("Name a colour.").reply
    session.send("Remember that the lab closes at 6 pm.")
    assert session.start_consolidation() is False
    release.set()
    result = session.wait_consolidation(timeout=300)
    assert isinstance(result, RuntimeError) and result is session.last_consolidation and "exploded" in str(result)
    assert len(given) == 1 and given[0] is not model and given[0].model is not model.model
    assert memory.get(old.id).status == "active" and memory.weight_batches() == []
    assert memory.search("Where is the Eiffel Tower?", k=1)[0].edit.id == old.id
    assert hashes(model) == base
    assert any(r.levelno == logging.ERROR and r.name == "memedit.chat" and "background consolidation failed" in r.getMessage()
               for r in caplog.records)
