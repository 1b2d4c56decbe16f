"""Step machines and the scheduler: many answers advanced together give the answers each
gives alone, and one that fails fails alone."""

from __future__ import annotations

import pytest

from memedit.edited_model import make_router
from memedit.models import Prompt, Request
from memedit.retrievers.steps import Failed, counted, run_many, run_one

FACTS = [
    {"subject": "Marisol Quenby", "prompt": "{} works for", "target": "the Lisbon Botanical Institute"},
    {"subject": "Lisbon Botanical Institute", "prompt": "The headquarters of {} is in", "target": "Porto"},
    {"subject": "France", "prompt": "The capital of {} is", "target": "Lyon"},
]
QUESTIONS = ["Who employs Marisol Quenby?", "What is the capital of France?",
             "In which city is the headquarters of the employer of Marisol Quenby?", "Who wrote Hamlet?"]


class CountingModel:
    """The real model, counting how many rows each generate_many call receives."""

    def __init__(self, lm) -> None:
        self.lm, self.calls = lm, []

    def generate_many(self, requests, batch_size=8):
        self.calls.append(len(requests))
        return self.lm.generate_many(requests, batch_size=batch_size)

    def generate(self, prompt, max_new_tokens=32, stop=("\n",)):
        self.calls.append(1)
        return self.lm.generate(prompt, max_new_tokens=max_new_tokens, stop=stop)

    def __getattr__(self, name):  # the rest of the model (plain, chat, ...) as it is
        return getattr(self.lm, name)


@pytest.mark.parametrize("router", ["serac", "pokemqa", "mello", "graph"])
def test_answers_many_at_once_are_the_answers_one_by_one(lm, memory, router):
    for fact in FACTS:
        memory.add(**fact)
    routed = make_router(router, lm, memory)
    alone = [routed.answer(q) for q in QUESTIONS]
    together = routed.answer_many(QUESTIONS, batch_size=4)
    assert [a.text for a in together] == [a.text for a in alone]
    assert [a.route for a in together] == [a.route for a in alone]
    assert [[e.id for e in a.edits_used] for a in together] == [[e.id for e in a.edits_used] for a in alone]
    assert [a.trace for a in together] == [a.trace for a in alone]
    if router == "serac":
        assert any(a.edits_used for a in alone)  # some question really went through an edit
    else:  # the chains really ran hops, each a generation the scheduler batched
        assert sum(s["step"] == "hop" for a in alone for s in a.trace) >= len(QUESTIONS)


def test_the_scheduler_batches_chains_that_wait_at_the_same_time(lm, memory):
    for fact in FACTS:
        memory.add(**fact)
    counting = CountingModel(lm)
    routed = make_router("pokemqa", counting, memory)
    run_many(counting, [routed.answer_steps(q) for q in QUESTIONS], batch_size=4)
    assert counting.calls[0] == len(QUESTIONS)  # every chain's first hop in one call
    assert max(counting.calls) <= 4


def _machine(name: str, lm, fail_after: int | None = None):
    text = ""
    for step in range(3):
        if fail_after == step:
            raise RuntimeError(f"{name} broke at step {step}")
        text += (yield Request(lm.chat([{"role": "user", "content": f"{name}, say a word. {text}"}]), 3)) + "|"
    return name + ":" + text


def test_a_failing_machine_fails_alone_and_the_others_finish(lm):
    finished = []
    machines = [_machine("alpha", lm), _machine("beta", lm, fail_after=1), _machine("gamma", lm)]
    results = run_many(lm, machines, batch_size=2, on_done=lambda i, r: finished.append(i))
    assert isinstance(results[1], Failed) and "beta broke at step 1" in str(results[1])
    assert results[0] == run_one(lm, _machine("alpha", lm))
    assert results[2] == run_one(lm, _machine("gamma", lm))
    assert sorted(finished) == [0, 1, 2]


def test_a_bad_request_fails_only_its_machine(lm):
    def bad():
        yield Request(Prompt("", ""), 4)
        return "never"

    results = run_many(lm, [bad(), _machine("delta", lm)], batch_size=4)
    assert isinstance(results[0], Failed) and "empty" in str(results[0])
    assert results[1] == run_one(lm, _machine("delta", lm))


def test_a_batch_the_model_cannot_run_is_retried_row_by_row(lm):
    class Flaky:
        """Fails any batch holding the prompt that mentions 'poison'; fine otherwise."""

        def generate_many(self, requests, batch_size=8):
            if any("poison" in r.prompt.text for r in requests):
                raise RuntimeError("upstream refused the batch")
            return lm.generate_many(requests, batch_size=batch_size)

    results = run_many(Flaky(), [_machine("poison", lm), _machine("epsilon", lm)], batch_size=4)
    assert isinstance(results[0], Failed) and "upstream refused" in str(results[0])
    assert results[1] == run_one(lm, _machine("epsilon", lm))


def test_counted_counts_each_generation_and_passes_errors_through(lm):
    calls = [0]
    assert run_one(lm, counted(_machine("alpha", lm), calls)) == run_one(lm, _machine("alpha", lm))
    assert calls == [3]  # the machine asks for three generations

    class Broken:
        def generate_many(self, requests, batch_size=8):
            raise RuntimeError("the model is down")

    broken = [0]
    results = run_many(Broken(), [counted(_machine("beta", lm), broken)], batch_size=1)
    assert isinstance(results[0], Failed) and "the model is down" in str(results[0]) and broken == [1]
