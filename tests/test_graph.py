"""The graph router: the walk over the memory's triples (with a scripted model, so each test
states what the model said and checks what the router made of it), and the real thing on
SmolLM2 (mechanics: the same machinery, batched or not, on a local and a black-box model)."""

from __future__ import annotations

import pytest

from memedit import Edit
from memedit.edited_model import EditedModel
from memedit.models import Prompt
from memedit.retrievers.graph import GraphRouter, clean_answer, next_line
from memedit.retrievers.steps import run_many


class ScriptedModel:
    """A model that says what the test wrote, in the walk's line format: ``walks`` maps a
    question to (its first entity, its sub-questions with ``#`` where the model writes the
    previous answer); ``answers`` maps a sub-question to the model's answer. Every prompt
    is kept."""

    def __init__(self, walks: dict[str, tuple[str, list[str]]], answers: dict[str, str] | None = None) -> None:
        self.walks, self.answers = walks, answers or {}
        self.prompts: list[Prompt] = []

    def generate(self, prompt: Prompt, max_new_tokens: int = 24, stop=()) -> str:
        self.prompts.append(prompt)
        body = prompt.body
        question = body.split("Question: ", 1)[1].split("\n", 1)[0]
        if question not in self.walks:
            return "I cannot split this question"
        entity, steps = self.walks[question]
        lines = body.splitlines()
        asked = [line.split(": ", 1)[1] for line in lines if line.startswith("Sub-question: ")]
        current = entity
        for line in lines:
            if line.startswith("Answer: "):
                current = line.split(": ", 1)[1]
        text = ""
        if body.endswith("Answer:"):
            current = self.answers.get(asked[-1], "unknown")
            text = f" {current}\n"
        following = (f"Sub-question: {steps[len(asked)].replace('#', current)}" if len(asked) < len(steps)
                     else f"Final answer: {current}")
        return text + following

    def generate_many(self, requests, batch_size: int = 8) -> list[str]:
        return [self.generate(r.prompt, r.max_new_tokens, r.stop) for r in requests]

    @staticmethod
    def plain(text: str) -> str:
        """No tokenizer, so no control tokens to break: text stays as it is."""
        return text

    @property
    def answer_calls(self) -> int:
        """Generations in which the model wrote a hop's answer."""
        return sum(p.body.endswith("Answer:") for p in self.prompts)


CHAIN = "Which city is the home of the club that Ada Brennick works for?"
CHAIN_WALK = ("Ada Brennick", ["Who employs #?", "Which city is # based in?"])


@pytest.fixture
def chain_memory(memory):
    memory.add(Edit(subject="Ada Brennick", relation="employer", prompt="{} is employed by", target="Halden Rovers"))
    memory.add(Edit(subject="Halden Rovers", relation="home city", prompt="{} is based in the city of",
                    target="Tromsø"))
    return memory


def hops(answer):
    return [s for s in answer.trace if s["step"] == "hop"]


def test_the_next_sub_question_or_the_final_answer_is_read_from_a_generation():
    assert next_line("Sub-question: Who founded Sony?") == ("Who founded Sony?", None)
    assert next_line(" \nFinal answer: Tokyo") == (None, "Tokyo")
    assert next_line("no lines of ours") == (None, None)
    assert clean_answer(" Tromsø.\nmore") == "Tromsø"


def test_an_edit_changes_the_first_hop_and_the_second_hop_follows_its_target(chain_memory):
    model = ScriptedModel({CHAIN: CHAIN_WALK}, {"Who employs Ada Brennick?": "Oslo FC"})
    answer = GraphRouter(model, chain_memory).answer(CHAIN)
    walk = hops(answer)
    assert [h["entity"] for h in walk] == ["Ada Brennick", "Halden Rovers"]
    assert [h["source"] for h in walk] == ["edit", "edit"]
    assert answer.text == "Tromsø"
    assert [e.target for e in answer.edits_used] == ["Halden Rovers", "Tromsø"]
    # one call per step and one that ends the walk; the model never answered a step an edit answered
    assert len(model.prompts) == 3 and model.answer_calls == 0
    transcript = next(s for s in answer.trace if s["step"] == "transcript")["text"]
    # each entity's facts are shown before the sub-question about it, and not again after it
    assert transcript.endswith('Key entity: "Ada Brennick"\nMemory fact: "Ada Brennick is employed by Halden Rovers."\n'
                               "Sub-question: Who employs Ada Brennick?\nAnswer: Halden Rovers\n"
                               'Memory fact: "Halden Rovers is based in the city of Tromsø."\n'
                               "Sub-question: Which city is Halden Rovers based in?\nAnswer: Tromsø\n")
    assert next(s for s in answer.trace if s["step"] == "chain_answers")["answers"] == ["Halden Rovers", "Tromsø"]


def test_a_hop_no_edit_covers_is_answered_by_the_model_from_the_edited_entity(memory):
    memory.add(Edit(subject="Ada Brennick", relation="employer", prompt="{} is employed by", target="Halden Rovers"))
    model = ScriptedModel({CHAIN: CHAIN_WALK}, {"Which city is Halden Rovers based in?": "Halden"})
    answer = GraphRouter(model, memory).answer(CHAIN)
    assert [h["source"] for h in hops(answer)] == ["edit", "model"]
    assert hops(answer)[1]["subquestion"] == "Which city is Halden Rovers based in?"
    assert answer.text == "Halden"
    assert model.answer_calls == 1 and len(model.prompts) == 3


def test_facts_about_a_model_answer_are_shown_before_the_next_sub_question(memory):
    memory.add(Edit(subject="Halden Rovers", relation="home city", prompt="{} is based in the city of", target="Tromsø"))
    memory.add(Edit(subject="Halden Rovers Academy", relation="home city", prompt="{} is based in the city of",
                    target="Bergen"))
    model = ScriptedModel({CHAIN: CHAIN_WALK}, {"Who employs Ada Brennick?": "Halden Rovers"})
    answer = GraphRouter(model, memory).answer(CHAIN)
    assert [h["source"] for h in hops(answer)] == ["model", "edit"] and answer.text == "Tromsø"
    # the model's answer named an entity the memory knows: its facts, then the sub-question written again
    assert model.prompts[2].body.endswith('Answer: Halden Rovers\nMemory fact: "Halden Rovers is based in the city of Tromsø."\n')
    assert len(model.prompts) == 4 and hops(answer)[1]["facts_shown"] == [answer.edits_used[0].id]
    # an entity whose name only contains the answer's is another entity
    assert "Bergen" not in model.prompts[-1].body


def test_a_sub_question_about_a_shown_facts_target_takes_that_fact_as_the_skipped_hop(chain_memory):
    model = ScriptedModel({CHAIN: ("Ada Brennick", ["Which city is Halden Rovers based in?", "Which city is # based in?"])})
    answer = GraphRouter(model, chain_memory).answer(CHAIN)
    walk = hops(answer)
    assert [(h["entity"], h["answer"], h["source"]) for h in walk] == [
        ("Ada Brennick", "Halden Rovers", "edit"), ("Halden Rovers", "Tromsø", "edit")]
    assert "skipping" in walk[0]["implied"] and answer.text == "Tromsø"
    assert [e.target for e in answer.edits_used] == ["Halden Rovers", "Tromsø"]
    # the skipped hop is written in the fact's own words before the model goes on
    assert "Sub-question: Ada Brennick is employed by what?\nAnswer: Halden Rovers\n" in model.prompts[1].body


def test_a_sub_question_that_restates_a_shown_fact_with_its_target_in_place_is_asked_again(chain_memory):
    model = ScriptedModel({CHAIN: ("Ada Brennick", ["Who employs Halden Rovers?", "Which city is # based in?"])})
    answer = GraphRouter(model, chain_memory).answer(CHAIN)
    walk = hops(answer)
    assert [(h["subquestion"], h["answer"]) for h in walk] == [
        ("Who employs Ada Brennick?", "Halden Rovers"), ("Which city is Halden Rovers based in?", "Tromsø")]
    assert "target in place" in walk[0]["implied"] and answer.text == "Tromsø"
    # the transcript holds the hop as it should have been asked; the garbled one is gone
    assert "Who employs Halden Rovers?" not in model.prompts[-1].body
    assert "Sub-question: Who employs Ada Brennick?\nAnswer: Halden Rovers\n" in model.prompts[-1].body


def test_the_facts_shown_about_one_entity_are_bounded_nearest_the_question_first(memory):
    for relation, prompt, target in [("employer", "{} is employed by", "Halden Rovers"),
                                     ("birthplace", "{} was born in", "Narvik"),
                                     ("spouse", "{} is married to", "Ben Ode")]:
        memory.add(Edit(subject="Ada Brennick", relation=relation, prompt=prompt, target=target))
    question = "Who is Ada Brennick married to?"
    router = GraphRouter(ScriptedModel({}), memory, max_facts=2)
    facts = router.facts_about("ada brennick", question)
    assert len(facts) == 2 and facts[0].target == "Ben Ode"
    assert GraphRouter(ScriptedModel({}), memory, max_facts=0).facts_about("Ada Brennick", question) == []
    assert router.facts_about("Ben Ode", question) == [] and router.facts_about(None, question) == []


def test_without_an_edit_that_applies_the_model_answers_each_hop(chain_memory):
    question = "In which country is the Eiffel Tower?"
    model = ScriptedModel({question: ("Eiffel Tower", ["In which country is # located?"])},
                          {"In which country is Eiffel Tower located?": "France"})
    answer = GraphRouter(model, chain_memory).answer(question)
    assert answer.text == "France" and answer.edits_used == []
    assert hops(answer)[0]["source"] == "model" and hops(answer)[0]["in_scope"] is False


def test_entity_found_through_an_alias_stored_on_an_edit(memory):
    memory.add(Edit(subject="Ada Brennick", relation="employer", prompt="{} is employed by", target="Halden Rovers",
                    aliases=("the Rovers",)))
    memory.add(Edit(subject="Halden Rovers", relation="home city", prompt="{} is based in the city of", target="Tromsø"))
    question = "Where are the Rovers based?"
    model = ScriptedModel({question: ("the Rovers", ["Which city is # based in?"])})
    answer = GraphRouter(model, memory).answer(question)
    assert answer.text == "Tromsø" and hops(answer)[0]["source"] == "edit"


def test_a_free_text_edit_in_scope_is_quoted_to_the_model(memory):
    memory.add(Edit(statement="Ada Brennick now plays for the Halden Rovers."))
    question = "Which club does Ada Brennick play for?"
    model = ScriptedModel({question: ("Ada Brennick", ["Which club does # play for?"])},
                          {"Which club does Ada Brennick play for?": "Halden Rovers"})
    router = GraphRouter(model, memory, detector="embedding")
    router.detector.classifier.threshold = 0.3
    answer = router.answer(question)
    assert hops(answer)[0]["source"] == "fact"
    assert model.prompts[1].body.endswith('Memory fact: "Ada Brennick now plays for the Halden Rovers."\nAnswer:')
    assert answer.text == "Halden Rovers" and len(answer.edits_used) == 1


def test_an_erase_in_scope_refuses(memory):
    memory.add(Edit(kind="erase", subject="Ada Brennick", relation="employer", prompt="{} is employed by"))
    model = ScriptedModel({CHAIN: CHAIN_WALK})
    answer = GraphRouter(model, memory).answer(CHAIN)
    assert answer.route == "erase" and answer.text == GraphRouter(model, memory).refusal
    assert len(model.prompts) == 1


def test_a_garbled_decomposition_falls_back_to_the_plain_question(chain_memory):
    question = "Tell me something about Ada Brennick's club city"
    answer = GraphRouter(ScriptedModel({}), chain_memory).answer(question)
    assert any(s["step"] == "fallback" for s in answer.trace)
    walk = hops(answer)
    assert len(walk) == 1 and walk[0]["subquestion"] == question and answer.text == walk[0]["answer"]


def test_a_cycle_in_the_edits_ends_the_walk_and_says_so(memory):
    memory.add(Edit(subject="Ada Brennick", relation="employer", prompt="{} is employed by", target="Ben Ode"))
    memory.add(Edit(subject="Ben Ode", relation="employer", prompt="{} is employed by", target="Ada Brennick"))
    question = "Who employs the employer of the employer of Ada Brennick?"
    model = ScriptedModel({question: ("Ada Brennick", ["Who employs #?"] * 3)})
    answer = GraphRouter(model, memory).answer(question)
    assert [h["answer"] for h in hops(answer)] == ["Ben Ode", "Ada Brennick"]
    assert any(s["step"] == "stop" and "cycle" in s["reason"] for s in answer.trace)
    assert answer.text == "Ada Brennick"


def test_a_walk_longer_than_max_hops_stops_there_and_says_so(chain_memory):
    model = ScriptedModel({CHAIN: (CHAIN_WALK[0], CHAIN_WALK[1] + ["Who is the mayor of #?"])})
    answer = GraphRouter(model, chain_memory, max_hops=2).answer(CHAIN)
    assert len(hops(answer)) == 2 and answer.text == "Tromsø"
    assert any(s["step"] == "stop" and "max_hops" in s["reason"] for s in answer.trace)


def test_bad_options_are_named(memory):
    with pytest.raises(ValueError, match="max_hops"):
        GraphRouter(ScriptedModel({}), memory, max_hops=0)
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="max_facts"):
            GraphRouter(ScriptedModel({}), memory, max_facts=bad)


def test_many_walks_batched_give_the_answers_of_one_at_a_time(chain_memory):
    questions = {CHAIN: CHAIN_WALK, "Who employs Ada Brennick?": ("Ada Brennick", ["Who employs #?"]),
                 "What is the capital of Norway?": ("Norway", ["What is the capital of #?"])}
    model = ScriptedModel(questions, {"What is the capital of Norway?": "Oslo"})
    router = GraphRouter(model, chain_memory)
    alone = [router.answer(q).text for q in questions]
    together = [a.text for a in run_many(model, (router.answer_steps(q) for q in questions), batch_size=3)]
    assert together == alone == ["Tromsø", "Halden Rovers", "Oslo"]


@pytest.mark.slow
def test_graph_router_runs_on_smollm2_local_and_black_box(lm, chain_memory):
    """Mechanics on the real model: the decomposition is the model's own, the walk's final
    answer is its last hop's, and batching changes nothing."""
    from memedit.adapters.langchain import LocalChatModel, MemoryChatModel

    edited = EditedModel(lm, chain_memory, router="graph")
    questions = [CHAIN, "Who employs Ada Brennick?"]
    answers = [edited.ask(q) for q in questions]
    for answer in answers:
        walk = hops(answer)
        assert answer.route == "graph" and walk
        assert answer.text == walk[-1]["answer"]
        for hop in walk:  # each hop starts from the previous answer (or the entity the model named)
            assert hop["source"] in ("edit", "fact", "model")
    assert [a.text for a in edited.router.answer_many(questions, batch_size=2)] == [a.text for a in answers]
    chat = MemoryChatModel(chat_model=LocalChatModel(model=lm), memory=chain_memory, router="graph")
    reply = chat.invoke("Who employs Ada Brennick?")
    assert reply.response_metadata["memedit"]["route"] in ("graph", "erase")
