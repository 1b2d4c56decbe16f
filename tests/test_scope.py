"""Scope classifiers: training pairs, threshold calibration, and the MiniLM cross-encoder
(trained for real, briefly, on hand-made pairs; saved, reloaded and checked)."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest

from memedit.edit import Edit
from memedit.embeddings import MINILM_SHA256
from memedit.files import sha256_file
from memedit.errors import ModelPackageError
from memedit.eval.cases import Case, Probe
from memedit.retrievers.scope import CrossEncoderScope, EmbeddingScope, ScopeClassifier, ScopePair
from memedit.retrievers.scope_pairs import (best_threshold, calibrate, plateau_threshold, precision_recall, scope_metrics,
                                            scope_pairs)
from memedit.retrievers.scope_training import train_cross_encoder

NAMES = ["Zorbania Quell", "Tavin Marlowe", "Oskar Pemberton", "Lirael Voss", "Hector Quimby", "Mira Castellan",
         "Doran Whitlock", "Elsbeth Farrow", "Caius Brenner", "Nadia Orlov", "Fenwick Hale", "Ysolde Parry",
         "Rupert Ainsley", "Talia Merriweather", "Bastian Kroll", "Ophelia Strand"]
CITIES = ["Lyon", "Kyoto", "Lima", "Oslo", "Perth", "Quito", "Accra", "Hanoi",
          "Dakar", "Riga", "Cusco", "Tunis", "Bergen", "Porto", "Graz", "Split"]
QUESTIONS = ["Where was {} born?", "What is the birthplace of {}?", "In which city was {} born?"]


def birth_pairs(people: range, seed: int = 0) -> list[ScopePair]:
    """For each person: the three birthplace questions about them are in scope of their
    statement; the same questions about another person (same relation) are not."""
    rng = random.Random(seed)
    pairs = []
    for i in people:
        statement = f"{NAMES[i]} was born in {CITIES[i]}."
        for question in QUESTIONS:
            other = rng.choice([j for j in people if j != i])
            pairs.append(ScopePair(question.format(NAMES[i]), statement, 1))
            pairs.append(ScopePair(question.format(NAMES[other]), statement, 0))
    return pairs


def make_case(i: int) -> Case:
    name = NAMES[i]
    edit = Edit(subject=name, prompt="{} was born in", target=CITIES[i], old_target="Paris")
    probes = (Probe(f"{name} was born in", (CITIES[i],), "reliability"),
              Probe(f"Where was {name} born?", (CITIES[i],), "generality"),
              Probe(f"Which country is {name}'s birthplace in?", ("somewhere",), "portability", "Reasoning"),
              Probe(f"{name} works as a", ("chef",), "locality", "Relation_Specificity"))
    return Case(f"case-{i}", edit, probes)


CASES = [make_case(i) for i in range(10)]


# ---------------------------------------------------------------- scope_pairs


def test_scope_pairs_labels_follow_the_probe_metrics():
    pairs = scope_pairs(CASES, negatives_per_case=2, seed=0)
    for case in CASES:
        own = [p for p in pairs if p.statement == case.edit.statement and p.kind not in ("unrelated", "same_relation")]
        assert [(p.question, p.label, p.kind) for p in own] == [
            (probe.prompt, int(probe.metric != "locality"), probe.metric) for probe in case.probes]
        easy = [p for p in pairs if p.statement == case.edit.statement and p.kind == "unrelated"]
        assert len(easy) == 2 and all(p.label == 0 for p in easy)
        own_prompts = {probe.prompt for probe in case.probes}
        assert not own_prompts & {p.question for p in easy}
        assert all(case.edit.subject not in p.question for p in easy)
    assert len(pairs) == len(CASES) * (4 + 2 + 2)


def test_scope_pairs_teach_that_the_same_relation_about_another_subject_is_out():
    pairs = scope_pairs(CASES, negatives_per_case=0, relation_negatives_per_case=3)
    for case in CASES:
        hard = [p for p in pairs if p.statement == case.edit.statement and p.kind == "same_relation"]
        assert len(hard) == 3 and all(p.label == 0 for p in hard)
        assert all(case.edit.subject not in p.question and p.question.endswith(" was born in") for p in hard)
    other_relation = Case("x", Edit(subject="Zed", prompt="{} plays", target="chess"), (Probe("Zed plays", ("chess",), "reliability"),))
    lone = scope_pairs([CASES[0], other_relation], negatives_per_case=0)
    assert [p for p in lone if p.kind == "same_relation"] == []


def test_scope_pairs_are_deterministic_for_a_seed():
    assert scope_pairs(CASES, seed=3) == scope_pairs(CASES, seed=3)
    assert scope_pairs(CASES, seed=3) != scope_pairs(CASES, seed=4)
    assert [p for p in scope_pairs(CASES, negatives_per_case=0) if p.kind == "unrelated"] == []


def test_scope_pairs_skip_other_cases_about_the_same_subject():
    twin = Case("twin", CASES[0].edit.replace(target="Rome"), CASES[0].probes)
    pairs = scope_pairs([CASES[0], twin], negatives_per_case=2)
    assert [p for p in pairs if p.kind == "unrelated"] == []


# ---------------------------------------------------------------- calibration


def test_best_threshold_maximises_f1_and_meets_a_target_precision():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([1, 1, 0, 1, 0, 0])
    assert best_threshold(scores, labels) == pytest.approx(0.55)  # F1 6/7 beats 4/5 at 0.75
    assert best_threshold(scores, labels, target_precision=1.0) == pytest.approx(0.75)
    assert best_threshold(np.array([0.5, 0.5, 0.2]), np.array([1, 0, 0])) == pytest.approx(0.35)  # ties stay together
    with pytest.raises(ValueError, match="at least one in-scope"):
        best_threshold(scores, np.zeros(6))


def test_the_plateau_threshold_sits_in_the_middle_of_a_flat_f1():
    # saturated scores: every threshold between 0.03 and 0.95 separates the classes the same
    # way; the plateau's middle (in log-odds) is well inside that range
    scores = np.array([0.99, 0.98, 0.97, 0.95, 0.03, 0.02, 0.01, 0.005])
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    assert best_threshold(scores, labels) == pytest.approx(0.49, abs=0.01)  # midway between 0.95 and 0.03
    flat = np.r_[scores, 0.6]  # one positive in the middle: F1 drops only past 0.6
    flat_labels = np.r_[labels, 1]
    middle = plateau_threshold(flat, flat_labels)
    assert 0.1 < middle < 0.6  # inside the range where F1 is best, not at its edge
    separable = plateau_threshold(scores, labels)
    assert 0.3 < separable < 0.7 and scope_metrics(scores, labels, separable)["f1"] == 1.0


def test_calibrate_separates_a_separable_set(embedder):
    pairs = [ScopePair(f"Where was {NAMES[i]} born?", f"{NAMES[i]} was born in {CITIES[i]}.", 1) for i in range(5)]
    pairs += [ScopePair(f"How tall is Mount {CITIES[i + 5]}?", f"{NAMES[i]} was born in {CITIES[i]}.", 0) for i in range(5)]
    scope = EmbeddingScope(embedder, threshold=0.99)
    threshold = calibrate(scope, pairs)
    scores = scope.pair_scores(pairs)
    assert scope.threshold == threshold
    assert scores[:5].min() >= threshold > scores[5:].max()
    assert precision_recall(scope, pairs) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "n": 10, "threshold": threshold}
    assert np.allclose(scores, [scope.scores(p.question, [p.statement])[0] for p in pairs], atol=1e-5)
    assert [bool(scope.in_scope(p.question, [p.statement])[0]) for p in pairs] == [True] * 5 + [False] * 5


# ---------------------------------------------------------------- cross-encoder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A cross-encoder trained one epoch (a few steps) on hand-made pairs."""
    folder = tmp_path_factory.mktemp("scope") / "tiny"
    return train_cross_encoder(birth_pairs(range(4)), folder, epochs=1, batch_size=8, progress=False), folder


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory):
    """A cross-encoder trained on eight people, enough to learn that the subject must match."""
    folder = tmp_path_factory.mktemp("scope") / "trained"
    return train_cross_encoder(birth_pairs(range(8)), folder, epochs=4, batch_size=8, lr=2e-4, progress=False)


def test_trained_folder_records_what_was_trained(tiny_model):
    scope, folder = tiny_model
    meta = json.loads((folder / "scope.json").read_text())
    assert meta["weights_sha256"] == sha256_file(folder / "model.safetensors")
    assert meta["base_model_sha256"] == MINILM_SHA256
    assert (meta["seed"], meta["epochs"]) == (0, 1)
    assert meta["train_pairs"] + (meta["calibration_pairs"] if meta["calibrated_on"] == "held-out" else 0) == 24
    assert meta["threshold"] == scope.threshold
    assert isinstance(scope, ScopeClassifier)


def test_save_load_round_trip_gives_identical_scores(tiny_model):
    scope, folder = tiny_model
    loaded = CrossEncoderScope.load(folder)
    pairs = birth_pairs(range(10, 16))
    assert np.array_equal(loaded.pair_scores(pairs), scope.pair_scores(pairs))
    assert loaded.threshold == scope.threshold
    question, statements = pairs[0].question, [p.statement for p in pairs[:6]]
    assert np.array_equal(loaded.in_scope(question, statements), scope.in_scope(question, statements))
    assert loaded.in_scope(question, statements).dtype == np.bool_


def test_training_is_deterministic_for_a_seed(tiny_model, tmp_path):
    _, folder = tiny_model
    again = train_cross_encoder(birth_pairs(range(4)), tmp_path / "again", epochs=1, batch_size=8, progress=False)
    assert again.meta["weights_sha256"] == json.loads((folder / "scope.json").read_text())["weights_sha256"]


def test_damaged_or_missing_files_raise_model_package_error(tiny_model, tmp_path):
    _, folder = tiny_model
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="damaged") as err:
        CrossEncoderScope.load(copy)
    assert str(copy) in str(err.value) and "bench/scope.py --out" in str(err.value)
    weights.unlink()
    with pytest.raises(ModelPackageError, match="missing"):
        CrossEncoderScope.load(copy)
    (copy / "scope.json").unlink()
    with pytest.raises(ModelPackageError, match="no trained scope classifier"):
        CrossEncoderScope.load(copy)


def test_trained_cross_encoder_ranks_unseen_in_scope_pairs_higher(trained_model):
    held = birth_pairs(range(8, 16))  # people never seen in training
    scores = trained_model.pair_scores(held)
    labels = np.array([p.label for p in held])
    inside, outside = scores[labels == 1], scores[labels == 0]
    assert inside.mean() > outside.mean() + 0.2, (inside.mean(), outside.mean())
    assert np.mean(inside[:, None] > outside[None, :]) > 0.9  # pairwise ranking accuracy (AUC)
    assert trained_model.meta["final_loss"] < 0.5
