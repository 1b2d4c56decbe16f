"""GRACE on SmolLM2: a codebook at one MLP layer; the model's weights never change."""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch

from memedit.artifacts import ArtifactError
from memedit.edited_model import EditedModel
from memedit.layout import find_blocks
from memedit.retrievers.grace import GRACERouter

FAMILY = {"subject": "Epaspidoceras", "prompt": "Which family does {} belong to?", "target": "Noctuidae"}
QUESTION = "Which family does Epaspidoceras belong to?"
PARAPHRASE = {"subject": "Epaspidoceras", "prompt": "What family are {}?"}
UNRELATED = "Who wrote the play Hamlet?"


def weights_digest(lm) -> str:
    digest = hashlib.sha256()
    for name, tensor in lm.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def distance(router: GRACERouter, a: str, b: str) -> float:
    keys = [router.adaptor.query(router.model.prompt_ids(router.base_prompt(q))) for q in (a, b)]
    return float(torch.linalg.vector_norm(keys[0] - keys[1]))


def test_an_edit_changes_its_answer_and_the_weights_stay_bit_identical(lm, memory):
    before_weights = weights_digest(lm)
    model = EditedModel(lm, memory, router="grace")
    before = model.ask(QUESTION)
    assert before.route == "base" and "noctuidae" not in before.text.lower()
    edit = memory.add(**FAMILY)  # added after the router was built: picked up on the next question
    after = model.ask(QUESTION)
    assert "noctuidae" in after.text.lower(), after.text
    assert after.route == "grace" and [e.id for e in after.edits_used] == [edit.id]
    lookup = next(step for step in after.trace if step["step"] == "lookup")
    assert lookup["in_scope"] and lookup["distance"] <= lookup["radius"]
    assert weights_digest(lm) == before_weights
    assert all(not p.requires_grad or p.grad is None for p in lm.model.parameters())


def test_an_unrelated_prompt_gets_bit_identical_logits(lm, memory):
    router = GRACERouter(lm, memory)
    without = router.logits(UNRELATED)
    base = router.logits(QUESTION)
    memory.add(**FAMILY)
    memory.add(subject="Tokyo", prompt="{} is the capital of", target="Canada")
    assert len(router.entries) == 0  # synced lazily, on the next question
    with_codebook = router.logits(UNRELATED)
    assert len(router.entries) == 2
    assert torch.equal(with_codebook, without)
    edited = router.logits(QUESTION)
    assert not torch.equal(edited, base)  # the same check can fail: in scope the logits change
    target_first = lm.tokenizer("Noctuidae", add_special_tokens=False)["input_ids"][0]
    assert int(edited.argmax()) == target_first


def test_a_far_key_is_added_with_the_initial_radius(lm, memory):
    probe = GRACERouter(lm, memory, autosave=False)
    d = distance(probe, QUESTION, "What family are Epaspidoceras?")
    router = GRACERouter(lm, memory, radius=0.4 * d, autosave=False)  # d > r + r: no overlap
    memory.add(**FAMILY)
    memory.add(**PARAPHRASE, target="Geometridae")
    router.sync()
    assert [e["rule"] for e in router.events] == ["add", "add"]
    assert [e.radius for e in router.entries] == [pytest.approx(0.4 * d)] * 2
    assert router.answer("What family are Epaspidoceras?").route == "grace"


def test_a_near_key_with_the_same_target_expands_the_radius(lm, memory):
    probe = GRACERouter(lm, memory, autosave=False)
    d = distance(probe, QUESTION, "What family are Epaspidoceras?")
    router = GRACERouter(lm, memory, radius=0.75 * d, autosave=False)  # r < d <= 2r
    first = memory.add(**FAMILY)
    second = memory.add(**PARAPHRASE, target="Noctuidae")
    router.sync()
    assert [e["rule"] for e in router.events] == ["add", "expand"]
    assert len(router.entries) == 1
    entry = router.entries[0]
    assert entry.edit_ids == [first.id, second.id]
    assert entry.radius == pytest.approx(d, rel=1e-4) and entry.radius > 0.75 * d
    for question in (QUESTION, "What family are Epaspidoceras?"):
        answer = router.answer(question)
        assert answer.route == "grace" and "noctuidae" in answer.text.lower(), (question, answer.text)


def test_a_near_key_with_another_target_is_added_and_both_radii_split(lm, memory):
    probe = GRACERouter(lm, memory, autosave=False)
    d = distance(probe, QUESTION, "What family are Epaspidoceras?")
    router = GRACERouter(lm, memory, radius=0.75 * d, autosave=False)
    memory.add(**FAMILY)
    memory.add(**PARAPHRASE, target="Geometridae")
    router.sync()
    assert [e["rule"] for e in router.events] == ["add", "split"]
    assert [e.radius for e in router.entries] == [pytest.approx(d / 2, rel=1e-4)] * 2
    assert "noctuidae" in router.answer(QUESTION).text.lower()
    assert "geometridae" in router.answer("What family are Epaspidoceras?").text.lower()


def test_the_codebook_is_saved_reloaded_and_a_retraction_removes_its_key(lm, memory, caplog):
    router = GRACERouter(lm, memory)
    tokyo = memory.add(subject="Tokyo", prompt="{} is the capital of", target="Canada")
    edit = memory.add(**FAMILY)
    answer = router.answer(QUESTION).text
    ref = router.artifacts.ref(router.artifact_name)
    path = router.artifacts.folder / ref.file
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ref.sha256

    again = GRACERouter(lm, memory)  # a new router over the same memory: loads, trains nothing
    assert again.answer(QUESTION).text == answer
    assert again.events == []
    assert [e.edit_ids for e in again.entries] == [[tokyo.id], [edit.id]]
    for old, new in zip(router.entries, again.entries):
        assert torch.equal(old.key, new.key) and torch.equal(old.value, new.value) and old.radius == new.radius

    memory.retract(edit.id)
    after = again.answer(QUESTION)
    assert after.route == "base" and [e.edit_ids for e in again.entries] == [[tokyo.id]]
    reloaded = GRACERouter(lm, memory)
    assert [e.edit_ids for e in reloaded.entries] == [[tokyo.id]]
    assert reloaded.answer(QUESTION).text == after.text

    ref = reloaded.artifacts.ref(reloaded.artifact_name)
    (reloaded.artifacts.folder / ref.file).write_bytes(b"corrupted")
    with pytest.raises(ArtifactError, match="SHA-256"):
        reloaded.artifacts.load(reloaded.artifact_name)
    with caplog.at_level(logging.WARNING):
        rebuilt = GRACERouter(lm, memory)
    assert "rebuilt" in caplog.text and rebuilt.entries == []
    assert "canada" in rebuilt.answer("Tokyo is the capital of").text.lower()  # retrained from the memory


def test_an_erase_refuses_and_a_free_text_edit_is_skipped_with_a_note(lm, memory):
    router = GRACERouter(lm, memory, refusal="That is not something I can say.", autosave=False)
    erase = memory.add(subject="Paris", prompt="The city of {} is located in", kind="erase")
    note = memory.add(statement="The office coffee machine is on the third floor.")
    answer = router.answer("The city of Paris is located in")
    assert answer.text == "That is not something I can say." and answer.route == "erase"
    assert [e.id for e in answer.edits_used] == [erase.id]
    skipped = next(step for step in answer.trace if step["step"] == "skipped")
    assert skipped["edits"] == [note.id] and "free-text" in skipped["reason"]
    assert router.answer(UNRELATED).route == "base"


def test_artifacts_are_scoped_to_a_namespace_and_checked(open_memory, storage):
    memory = open_memory(storage)  # SQLite and PostgreSQL: files in a folder, rows in the store
    artifacts = memory.artifacts
    other = memory.with_namespace("other").artifacts
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(0, 4)}
    ref = artifacts.save("delta/layer3", tensors, {"edits": ["x"]})
    loaded, got = artifacts.load("delta/layer3")
    assert torch.equal(loaded["a"], tensors["a"]) and loaded["b"].shape == (0, 4)
    assert got.sha256 == ref.sha256 and got.meta == {"edits": ["x"]}
    assert other.load("delta/layer3") is None and other.names() == []
    artifacts.save("delta/layer3", {"a": torch.ones(2)})
    assert not (artifacts.folder / ref.file).exists()  # the replaced file is removed
    assert artifacts.delete("delta/layer3") and artifacts.load("delta/layer3") is None
    with pytest.raises(ValueError, match="artifact name"):
        artifacts.save("../escape", tensors)


def test_the_wrapped_layer_is_found_and_checked(lm, memory):
    assert len(find_blocks(lm.model)) == lm.model.config.num_hidden_layers
    with pytest.raises(ValueError, match="layer must be from 0 to"):
        GRACERouter(lm, memory, layer=999)


def test_a_superseded_edit_leaves_the_codebook_and_the_newer_one_answers(lm, memory):
    router = GRACERouter(lm, memory, autosave=False)
    tokyo = memory.add(subject="Tokyo", prompt="{} is the capital of", target="Canada")
    old = memory.add(**FAMILY)
    newer = memory.add(**{**FAMILY, "target": "Geometridae"})  # same subject and relation: supersedes
    answer = router.answer(QUESTION)
    assert newer.supersedes == old.id
    assert [e.edit_ids for e in router.entries] == [[tokyo.id], [newer.id]]
    assert "geometridae" in answer.text.lower() and [e.id for e in answer.edits_used] == [newer.id]
