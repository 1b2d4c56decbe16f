"""The value loop's pieces on SmolLM2: the suffix-only passes give the logits a whole pass
gives, the kept rows ask other facts about the subject, and ROME's update reaches every
form's key."""

from __future__ import annotations

import pytest
import torch
from memedit.layout import find_blocks
from memedit.param_editors import values
from memedit.param_editors.rome import rank_one
from memedit.param_editors.tracing import OTHER_FACTS, Request, add_to_output, other_facts, pad

REQUESTS = [Request("a", "The mother tongue of {} is", "Danielle Darrieux", "English"),
            Request("b", "{} is a citizen of", "Paris Hilton", "Japan")]


def whole_pass_logits(lm, rows, picked, module, vectors):
    """The same scored positions as ``_scored``, from one pass over the whole rows."""
    ids, mask = pad(lm, [rows.tokens[r] for r in picked])
    at_rows, at_pos, kept_rows, kept_pos = [], [], [], []
    for j, r in enumerate(picked):
        target = rows.targets[r]
        if isinstance(target, int):
            kept_rows.append(j)
            kept_pos.append(target)
        else:
            at_rows += [j] * len(target[1])
            at_pos += range(target[0], target[0] + len(target[1]))
    with add_to_output(module, range(len(picked)), [rows.where[r] for r in picked], vectors):
        return values.logits_at(lm, ids, mask, at_rows + kept_rows, at_pos + kept_pos)


@pytest.mark.parametrize("subset", [False, True])
def test_suffix_passes_give_the_logits_of_a_whole_pass(lm, subset):
    rows = values._rows(lm, REQUESTS, chat=True, other_facts=True)
    module = find_blocks(lm.model)[6].mlp
    torch.manual_seed(0)
    deltas = torch.randn(len(REQUESTS), lm.model.config.hidden_size) * 3
    picked = list(range(len(rows.tokens)))
    if subset:  # the second request finished early: only the first one's rows run
        picked = [r for r in picked if rows.owner[r] == 0]
    vectors = deltas[[rows.owner[r] for r in picked]]
    with torch.no_grad():
        expected = whole_pass_logits(lm, rows, picked, module, vectors)
        got = values._Suffixes(lm, rows, module).logits(picked, module, vectors)
        unmoved = values._Suffixes(lm, rows, module).logits(picked, module, torch.zeros_like(vectors))
    assert values._Suffixes(lm, rows, module).skips  # the blocks below the vector run once, not each step
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=2e-3, rtol=1e-4), float((got - expected).abs().max())
    assert not torch.allclose(got, unmoved, atol=1e-2)  # the vectors do reach the scored positions


def test_kept_rows_ask_the_subjects_other_facts_and_read_their_last_token(lm):
    request = REQUESTS[0]
    rows = values._rows(lm, [request], chat=True, other_facts=True)
    kept = [r for r, t in enumerate(rows.targets) if isinstance(t, int)]
    assert len(kept) == 1 + len(other_facts(request))  # the essence, then each other fact
    essence, *others = kept
    assert rows.targets[essence] == rows.where[essence]
    for r in others:
        assert rows.targets[r] == len(rows.tokens[r]) - 1
        assert lm.tokenizer.decode(rows.tokens[r][:rows.where[r] + 1]).endswith(request.subject)
    assert len(values._rows(lm, [request], chat=True, other_facts=False).tokens) == len(rows.tokens) - len(others)


def test_other_facts_leave_out_templates_that_share_a_word_with_the_edit():
    asked = [r.prompt for r in other_facts(Request("a", "The occupation of {} is", "X", "y"))]
    assert "The occupation of {} is" not in asked and "The gender of {} is" in asked
    asked = [r.prompt for r in other_facts(Request("a", "{} was born in the place of", "X", "y"))]
    assert "The place of birth of {} is" not in asked
    assert len(other_facts(Request("a", "{} is a citizen of", "X", "y"))) == len(OTHER_FACTS)
    assert all("{}" in t and not t.startswith("{}") for t in OTHER_FACTS)  # the relation comes first


def test_rank_one_update_adds_the_value_at_every_forms_key():
    torch.manual_seed(1)
    x = torch.randn(500, 24)
    covariance = x.T @ x / len(x)
    keys = torch.randn(4, 24)
    delta = torch.randn(10)
    update = rank_one(keys, delta, covariance)
    assert torch.linalg.matrix_rank(update) == 1
    for key in keys:
        assert torch.allclose(update @ key, delta, atol=1e-4)
    # One key: published ROME's δ (C⁻¹k)ᵀ / (kᵀC⁻¹k).
    c = covariance.double() + 1e-4 * covariance.double().diagonal().mean() * torch.eye(24, dtype=torch.float64)
    u = torch.linalg.solve(c, keys[0].double())
    assert torch.allclose(rank_one(keys[0], delta, covariance), (torch.outer(delta.double(), u) / u.dot(keys[0].double())).float(),
                          atol=1e-5)


def test_baseline_gives_the_whole_pass_output_at_the_subject_and_the_kept_rows_reference(lm):
    from memedit.hooks import read_output

    rows = values._rows(lm, REQUESTS, chat=True, other_facts=True)
    module = find_blocks(lm.model)[6].mlp
    with torch.no_grad():
        outputs, reference = values._Suffixes(lm, rows, module).baseline(module)
        ids, mask = pad(lm, rows.tokens)
        with read_output(module) as seen:
            logits = lm.model(input_ids=ids, attention_mask=mask).logits
    assert sorted(outputs) == list(range(len(rows.tokens)))
    for r, where in enumerate(rows.where):
        assert torch.allclose(outputs[r], seen[0][r, where], atol=1e-4)
    kept = [r for r, t in enumerate(rows.targets) if isinstance(t, int)]
    assert sorted(reference) == kept
    for r in kept:
        expected = torch.log_softmax(logits[r, rows.targets[r]], -1)
        assert torch.allclose(reference[r].exp(), expected.exp(), atol=1e-4)


def test_weights_as_swaps_the_precision_and_puts_every_weight_back_bit_for_bit(lm):
    before = {name: p.detach().clone() for name, p in lm.model.named_parameters()}
    storage = {name: p.data_ptr() for name, p in lm.model.named_parameters()}  # the very tensors come back
    with values.weights_as(lm.model, torch.bfloat16):
        assert all(p.dtype == torch.bfloat16 for p in lm.model.parameters())
        reply = lm.model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert reply.dtype == torch.bfloat16
    for name, p in lm.model.named_parameters():
        assert p.data_ptr() == storage[name] and torch.equal(p, before[name])
    with pytest.raises(RuntimeError), values.weights_as(lm.model, torch.bfloat16):
        raise RuntimeError("a failure inside the draft")
    assert all(p.data_ptr() == storage[name] for name, p in lm.model.named_parameters())


def test_a_drafted_value_meets_the_stop_loss_measured_in_float32(lm, monkeypatch):
    monkeypatch.setattr(values, "draft_dtype", lambda lm, settings: torch.bfloat16)  # whatever this CPU has
    module = find_blocks(lm.model)[6].mlp
    settings = values.ValueSettings(steps=40)
    phases = []
    real_run = values._Descent.run

    def run(self, suffixes, reference):
        phases.append(suffixes.entering[0].dtype)
        return real_run(self, suffixes, reference)

    monkeypatch.setattr(values._Descent, "run", run)
    value = values._optimize_group(lm, [REQUESTS[0]], module, settings)[0]
    assert phases == [torch.bfloat16, torch.float32]  # the draft, then float32 from where it stopped
    assert value.loss < settings.stop_loss and 0 < value.steps <= settings.steps
    # The reported loss is the float32 model's, for the vector returned.
    rows = values._rows(lm, [REQUESTS[0]], chat=True, other_facts=True)
    suffixes = values._Suffixes(lm, rows, module)
    _, reference = suffixes.baseline(module)
    picked = list(range(len(rows.tokens)))
    with torch.no_grad():
        nll, _ = values._losses(suffixes.logits(picked, module, value.delta.expand(len(picked), -1)), rows, picked,
                                reference, 1)
    assert abs(float(nll[0]) - value.loss) < 1e-4
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())



@pytest.mark.parametrize("name, value", [("bfloat16_draft", "false"), ("chat_form", 1), ("other_facts", "yes"),
                                         ("steps", 0), ("steps", 2.5), ("lr", 0.0), ("kl_factor", -1.0),
                                         ("clamp_norm", float("nan")), ("stop_loss", "0.1"), ("retries", -1),
                                         ("retries", 1.5)])
def test_a_bad_value_setting_is_refused_with_its_name(lm, name, value):
    from memedit.errors import ArgumentError
    from memedit.param_editors.settings import EditorSettings, default_settings

    default = getattr(values.ValueSettings(), name) if name in values.ValueSettings.__dataclass_fields__ else getattr(
        EditorSettings("memit", (0,)), name)
    default_settings(lm, "rome", **{name: default})  # the field's default passes
    with pytest.raises(ArgumentError, match=f"^{name} must"):
        default_settings(lm, "rome", **{name: value})


def test_a_family_s_own_rome_kl_weight_and_clamp_are_its_defaults_and_a_caller_s_value_wins(lm):
    from types import SimpleNamespace

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from memedit.param_editors.settings import FAMILY_DEFAULTS, default_settings

    tiny = Qwen2ForCausalLM(Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=10,
                                        num_attention_heads=2, num_key_value_heads=1))
    qwen = SimpleNamespace(model=tiny)  # default_settings reads only the config and the blocks
    own = FAMILY_DEFAULTS["qwen2"]["rome_kl_factor"]
    assert own != values.ValueSettings.kl_factor
    assert default_settings(qwen, "rome").value.kl_factor == own
    assert default_settings(qwen, "memit").value.kl_factor == values.ValueSettings.kl_factor  # measured for ROME only
    assert default_settings(qwen, "rome", kl_factor=0.25).value.kl_factor == 0.25
    assert default_settings(lm, "rome").value.kl_factor == values.ValueSettings.kl_factor  # SmolLM2 (llama) keeps its own
    clamp = FAMILY_DEFAULTS["qwen2"]["rome_clamp_norm"]
    assert clamp != default_settings(lm, "rome").value.clamp_norm
    assert default_settings(qwen, "rome").value.clamp_norm == clamp
    assert default_settings(qwen, "memit").value.clamp_norm == default_settings(lm, "memit").value.clamp_norm
    assert default_settings(qwen, "rome", clamp_norm=3.0).value.clamp_norm == 3.0
