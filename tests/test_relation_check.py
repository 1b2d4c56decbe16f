"""The relation check: adapters added into MiniLM as trained, files checked, scores combined with the head's."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from memedit.errors import ModelPackageError
from memedit.retrievers.detector import (CHECK_WEIGHT, HEAD_DIR, HEAD_LOGIT_LIMIT, EditScope, free_text_mention, load_check,
                                         mask_statement, mask_subject, mention_of, typical_statement)
from memedit.retrievers.entities import mask, mask_prompt
from memedit.retrievers.relation_check import CHECK_FILE, CHECK_META, RANK, RelationCheck
from memedit.retrievers.scope_training import AdaptedMiniLM

PAIRS = [("Who is the chief executive of X?", "The CEO of X is Ilse Marwood."),
         ("Where was X born?", "X works for the Lisbon Botanical Institute."),
         ("x birthplace", "X was born in Tavrin.")]


def _save(folder, arrays, threshold=0.5):
    from safetensors.numpy import save_file

    from memedit.embeddings import MINILM_SHA256
    from memedit.files import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(folder / CHECK_FILE))
    meta = {"rank": RANK, "base_model_sha256": MINILM_SHA256, "threshold": threshold, "sha256": sha256_file(folder / CHECK_FILE)}
    (folder / CHECK_META).write_text(json.dumps(meta))


def test_adapters_run_beside_the_embedder_s_matrices_score_as_the_training_model_does(tmp_path):
    import torch

    from memedit.embeddings import Embedder, get_embedder

    # the embedder's encoder in float32 (the process-wide one may run bfloat16, 0.003 away)
    exact = Embedder(get_embedder().name, get_embedder()._model, precision="float32")
    adapted = AdaptedMiniLM(seed=3)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():  # B starts at zero; give every adapter and the classifier weights that change the output
        for _, b in adapted.adapters.values():
            b.copy_(torch.randn(b.shape, generator=generator) * 0.02)
        adapted.classifier.weight.copy_(torch.randn(adapted.classifier.weight.shape, generator=generator))
    adapted.model.eval()
    with torch.no_grad():
        expected = torch.sigmoid(adapted.logits(PAIRS)).numpy()
    _save(tmp_path / "check", adapted.arrays())
    got = RelationCheck.load(tmp_path / "check", embedder=exact).scores(PAIRS)
    assert np.allclose(got, expected, atol=1e-5), (got, expected)
    zeroed = {k: (np.zeros_like(v) if k.endswith(".B") else v) for k, v in adapted.arrays().items()}
    _save(tmp_path / "plain", zeroed)
    assert not np.allclose(RelationCheck.load(tmp_path / "plain", embedder=exact).scores(PAIRS), expected, atol=1e-3)


def test_a_damaged_check_is_refused_with_the_command_that_rebuilds_it(tmp_path):
    copy = tmp_path / "head"
    shutil.copytree(HEAD_DIR, copy)
    weights = copy / CHECK_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError) as err:
        load_check(copy)
    assert "SHA-256" in str(err.value) and "memedit scope train --out" in str(err.value)
    (copy / CHECK_META).unlink()
    with pytest.raises(ModelPackageError, match="holds no relation check"):
        RelationCheck.load(copy)


def test_a_head_without_a_check_judges_alone(tmp_path, embedder):
    copy = tmp_path / "head"
    shutil.copytree(HEAD_DIR, copy)
    for name in (CHECK_FILE, CHECK_META):
        (copy / name).unlink()
    assert load_check(copy) is None
    scope = EditScope(embedder, folder=copy)
    assert scope.check is None
    from memedit import Edit

    verdict = scope.judge("Who employs Marisol Quenby?", [Edit(subject="Marisol Quenby", prompt="{} works for", target="Halvorsen")])[0]
    assert "relation_check" not in verdict.reason and verdict.reason["mention"] == "Marisol Quenby"


def test_the_check_moves_the_head_s_score_of_a_named_pair_its_own_way(embedder):
    from memedit import Edit

    shipped = EditScope(embedder)
    assert shipped.check is not None and 0 < shipped.check.threshold < 1
    alone = EditScope(embedder, head=shipped.head, meta=shipped.meta)  # the same head, no check
    edits = [Edit(subject="Marisol Quenby", prompt="{} works for", target="the Lisbon Botanical Institute"),
             Edit(subject="Marisol Quenby", prompt="{} was born in", target="Tavrin"),
             Edit(statement="The Pellory Island ferry does not run on Sundays.")]
    offset = np.log(shipped.check.threshold / (1 - shipped.check.threshold))
    for question in ("Who employs Marisol Quenby?", "Where was Marisol Quenby born?", "marisol quenby hometown",
                     "Is the Pellory Island ferry running on Sunday?"):
        for with_check, head_only, edit in zip(shipped.judge(question, edits), alone.judge(question, edits), edits):
            mention, name = free_text_mention(question, edit.statement) if edit.subject is None else (None, "")
            if mention is not None:
                # free text whose name is asked: the check moves the threshold; the higher score counts
                masked = mask(question, mention)
                p = float(shipped.check.scores([(masked, mask_statement(edit.statement, name))])[0])
                assert with_check.reason["relation_check"] == pytest.approx(p, abs=1e-4)
                t = shipped.threshold
                moved = 1 / (1 + np.exp(-(np.log(t / (1 - t)) + CHECK_WEIGHT * (np.log(p / (1 - p)) - offset))))
                assert with_check.score == pytest.approx(max(head_only.score, moved), abs=1e-5)
                continue
            if edit.subject is None or mention_of(question, edit) is None:  # unnamed: not the check's to judge
                assert "relation_check" not in with_check.reason and with_check.score == head_only.score
                continue
            p = float(shipped.check.scores([(mask(question, mention_of(question, edit)), mask_subject(edit))])[0])
            assert with_check.reason["relation_check"] == pytest.approx(p, abs=1e-4)
            typical = with_check.reason.get("relation_check_typical_target")
            if typical is not None:  # asked again only where the check turned the pair down
                assert p < shipped.check.threshold
                # the typical statement as the detector makes it, scored exactly (the trace keeps 4 decimals)
                edit_bank = shipped.head.bank.scores(shipped.embed([mask_prompt(edit.prompt)]))[0]
                again = typical_statement(edit_bank, mask_subject(edit), edit.target, shipped.head.typical_targets)
                exact = float(shipped.check.scores([(mask(question, mention_of(question, edit)), again)])[0])
                assert typical == pytest.approx(exact, abs=1e-4)
                p = max(p, exact)
            h = np.clip(head_only.score, 1e-12, 1 - 1e-12)
            head = np.clip(np.log(h / (1 - h)), -HEAD_LOGIT_LIMIT, HEAD_LOGIT_LIMIT)  # the head, held within the limit
            expected = head + CHECK_WEIGHT * (np.log(p / (1 - p)) - offset)
            assert with_check.score == pytest.approx(1 / (1 + np.exp(-expected)), abs=1e-6)
            assert (with_check.score > 1 / (1 + np.exp(-head))) == (p > shipped.check.threshold) or with_check.score in (0.0, 1.0)
    decided = [shipped.judge(q, edits[:2]) for q in ("Who employs Marisol Quenby?", "Where was Marisol Quenby born?")]
    assert decided[0][0].in_scope and not decided[0][1].in_scope
    assert decided[1][1].in_scope and not decided[1][0].in_scope



def test_an_erase_is_judged_by_the_head_alone_the_check_never_saw_one(embedder):
    from memedit import Edit

    scope = EditScope(embedder)
    erase = Edit(subject="Alice", prompt="{}'s manager is", kind="erase")
    verdict = scope.judge("Who is Alice's manager?", [erase])[0]
    assert verdict.in_scope and "relation_check" not in verdict.reason and verdict.reason["mention"] == "Alice"
    alone = EditScope(embedder, head=scope.head, meta=scope.meta).judge("Who is Alice's manager?", [erase])[0]
    assert verdict.score == alone.score  # the head's own score, not moved by the check


def test_a_pair_turned_down_for_its_target_s_words_is_asked_again_with_a_typical_target(embedder):
    from memedit import Edit

    scope = EditScope(embedder)
    instrument, born = (Edit(subject="Ottilie Varnsworth", prompt="{} plays the", target="serpent"),
                        Edit(subject="Ottilie Varnsworth", prompt="{} was born in", target="Kessingmoor"))
    asked = scope.judge("ottilie varnsworth instrument", [instrument, born])
    # the check alone turns the instrument down for "serpent" (an instrument named by a common
    # word); with the relation's typical target it is in scope
    assert asked[0].reason["relation_check"] < scope.check.threshold <= asked[0].reason["relation_check_typical_target"]
    assert asked[0].in_scope and not asked[1].in_scope
    other = scope.judge("Where was Ottilie Varnsworth born?", [instrument, born])
    assert other[1].in_scope and not other[0].in_scope  # a typical target does not make another relation's question in scope
    assert "relation_check_typical_target" not in other[1].reason  # a pair the check takes is not asked again
    # a prompt that is none of the templates' own is never asked again
    fond = Edit(subject="Ottilie Varnsworth", prompt="Since childhood {} has been fond of playing the", target="serpent")
    assert "relation_check_typical_target" not in scope.judge("ottilie varnsworth instrument", [fond])[0].reason


def test_a_head_saved_without_typical_targets_never_asks_again(embedder):
    import copy

    from memedit import Edit

    shipped = EditScope(embedder)
    bare = copy.copy(shipped.head)
    bare.typical_targets = ()  # a head whose scope_head.json has none (trained before they were saved)
    plain = EditScope(embedder, head=bare, meta=shipped.meta, check=shipped.check)
    serpent = Edit(subject="Ottilie Varnsworth", prompt="{} plays the", target="serpent")
    asked = plain.judge("ottilie varnsworth instrument", [serpent])[0]
    assert "relation_check_typical_target" not in asked.reason and not asked.in_scope
    assert shipped.judge("ottilie varnsworth instrument", [serpent])[0].in_scope  # the shipped head's targets do
