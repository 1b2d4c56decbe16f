"""The graph router: the walk over the memory's triples (with a scripted model, so each test
states what the model said and checks what the router made of it), and the real thing on
SmolLM2 (mechanics: the same machinery, batched or not, on a local and a black-box model)."""

from __future__ import annotations

import pytest

from memedit import Edit
from memedit.edited_model import EditedModel
from memedit.models import Prompt
from memedit.retrievers.graph import DECOMPOSE_HEADER, GraphRouter, clean_answer, parse_decomposition
from memedit.retrievers.steps import run_many


class ScriptedModel:
    """A model that says what the test wrote: ``decompositions`` maps a question to the text
    after ``Entity:``; ``answers`` maps a sub-question to its answer. Every prompt is kept."""

    def __init__(self, decompositions: dict[str, str], answers: dict[str, str] | None = None) -> None:
        self.decompositions, self.answers = decompositions, answers or {}
        self.prompts: list[str] = []

    def generate(self, prompt: Prompt, max_new_tokens: int = 24, stop=()) -> str:
        self.prompts.append(prompt.text)
        body = prompt.body
        if prompt.prefix.startswith(DECOMPOSE_HEADER):
            question = body.split("Question: ", 1)[1].split("\n", 1)[0]
            return self.decompositions.get(question, " ???")
        subquestion = body.rsplit("Q: ", 1)[1].split("\n", 1)[0]
        return " " + self.answers.get(subquestion, "unknown")

    def generate_many(self, requests, batch_size: int = 8) -> list[str]:
        return [self.generate(r.prompt, r.max_new_tokens, r.stop) for r in requests]

    @property
    def answer_prompts(self) -> list[str]:
        return [p for p in self.prompts if not p.startswith(DECOMPOSE_HEADER)]


CHAIN = "Which city is the home of the club that Ada Brennick works for?"
CHAIN_STEPS = " Ada Brennick\nStep: Who employs #?\nStep: Which city is # based in?\n"


@pytest.fixture
def chain_memory(memory):
    memory.add(Edit(subject="Ada Brennick", relation="employer", prompt="{} is employed by", target="Halden Rovers"))
    memory.add(Edit(subject="Halden Rovers", relation="home city", prompt="{} is based in the city of",
                    target="Tromsø"))
    return memory


def hops(answer):
    return [s for s in answer.trace if s["step"] == "hop"]


def test_parse_decomposition_reads_the_entity_and_steps_and_stops_at_other_text():
    entity, steps = parse_decomposition(" Walkman.\nStep: Which company produced #?\nStep 2: Who founded #?\n"
                                        "Answer: Sony\nStep: not ours")
    assert entity == "Walkman"
    assert steps == ["Which company produced #?", "Who founded #?"]
    assert parse_decomposition(" \n\n") == (None, [])
    assert clean_answer(" Tromsø.\nmore") == "Tromsø"


def test_an_edit_changes_the_first_hop_and_the_second_hop_follows_its_target(chain_memory):
    model = ScriptedModel({CHAIN: CHAIN_STEPS}, {"Who employs Ada Brennick?": "Oslo FC"})
    answer = GraphRouter(model, chain_memory).answer(CHAIN)
    walk = hops(answer)
    assert [h["entity"] for h in walk] == ["Ada Brennick", "Halden Rovers"]
    assert [h["source"] for h in walk] == ["edit", "edit"]
    assert answer.text == "Tromsø"
    assert [e.target for e in answer.edits_used] == ["Halden Rovers", "Tromsø"]
    # one decomposition and no model call for hops that an edit answered
    assert len(model.prompts) == 1 and model.answer_prompts == []
    assert next(s for s in answer.trace if s["step"] == "chain_answers")["answers"] == ["Halden Rovers", "Tromsø"]


def test_a_hop_no_edit_covers_is_answered_by_the_model_from_the_edited_entity(memory):
    memory.add(Edit(subject="Ada Brennick", relation="employer", prompt="{} is employed by", target="Halden Rovers"))
    model = ScriptedModel({CHAIN: CHAIN_STEPS}, {"Which city is Halden Rovers based in?": "Halden"})
    answer = GraphRouter(model, memory).answer(CHAIN)
    assert [h["source"] for h in hops(answer)] == ["edit", "model"]
    assert answer.text == "Halden"
    assert len(model.answer_prompts) == 1 and "Q: Which city is Halden Rovers based in?" in model.answer_prompts[0]


def test_without_an_edit_that_applies_the_model_answers_each_hop(chain_memory):
    question = "In which country is the Eiffel Tower?"
    model = ScriptedModel({question: " Eiffel Tower\nStep: In which country is # located?\n"},
                          {"In which country is Eiffel Tower located?": "France"})
    answer = GraphRouter(model, chain_memory).answer(question)
    assert answer.text == "France" and answer.edits_used == []
    assert hops(answer)[0]["source"] == "model" and hops(answer)[0]["in_scope"] is False


def test_entity_found_through_an_alias_stored_on_an_edit(memory):
    memory.add(Edit(subject="Ada Brennick", relation="employer", prompt="{} is employed by", target="Halden Rovers",
                    aliases=("the Rovers",)))
    memory.add(Edit(subject="Halden Rovers", relation="home city", prompt="{} is based in the city of", target="Tromsø"))
    question = "Where are the Rovers based?"
    model = ScriptedModel({question: " the Rovers\nStep: Which city is # based in?\n"})
    answer = GraphRouter(model, memory).answer(question)
    assert answer.text == "Tromsø" and hops(answer)[0]["source"] == "edit"


def test_a_free_text_edit_in_scope_is_quoted_to_the_model(memory):
    memory.add(Edit(statement="Ada Brennick now plays for the Halden Rovers."))
    question = "Which club does Ada Brennick play for?"
    model = ScriptedModel({question: " Ada Brennick\nStep: Which club does # play for?\n"},
                          {"Which club does Ada Brennick play for?": "Halden Rovers"})
    router = GraphRouter(model, memory, detector="embedding")
    router.detector.classifier.threshold = 0.3
    answer = router.answer(question)
    assert hops(answer)[0]["source"] == "fact"
    assert 'Memory fact: "Ada Brennick now plays for the Halden Rovers."' in model.answer_prompts[0]
    assert answer.text == "Halden Rovers" and len(answer.edits_used) == 1


def test_an_erase_in_scope_refuses(memory):
    memory.add(Edit(kind="erase", subject="Ada Brennick", relation="employer", prompt="{} is employed by"))
    model = ScriptedModel({CHAIN: CHAIN_STEPS})
    answer = GraphRouter(model, memory).answer(CHAIN)
    assert answer.route == "erase" and answer.text == GraphRouter(model, memory).refusal
    assert model.answer_prompts == []


def test_a_garbled_decomposition_falls_back_to_the_plain_question(chain_memory):
    question = "Tell me something about Ada Brennick's club city"
    model = ScriptedModel({question: " \nI cannot split this"}, {question: "Tromsø"})
    answer = GraphRouter(model, chain_memory).answer(question)
    assert any(s["step"] == "fallback" for s in answer.trace)
    assert hops(answer)[0]["subquestion"] == question and answer.text == "Tromsø"
    # the fallback never copies an edit's target: the model answers, with a fact quoted if one applies
    assert hops(answer)[0]["source"] in ("model", "fact") and len(model.answer_prompts) == 1


def test_a_cycle_in_the_edits_ends_the_walk_and_says_so(memory):
    memory.add(Edit(subject="Ada Brennick", relation="employer", prompt="{} is employed by", target="Ben Ode"))
    memory.add(Edit(subject="Ben Ode", relation="employer", prompt="{} is employed by", target="Ada Brennick"))
    question = "Who employs the employer of the employer of Ada Brennick?"
    model = ScriptedModel({question: " Ada Brennick\nStep: Who employs #?\nStep: Who employs #?\nStep: Who employs #?\n"})
    answer = GraphRouter(model, memory).answer(question)
    assert [h["answer"] for h in hops(answer)] == ["Ben Ode", "Ada Brennick"]
    assert any(s["step"] == "stop" and "cycle" in s["reason"] for s in answer.trace)
    assert answer.text == "Ada Brennick"


def test_a_walk_longer_than_max_hops_stops_there_and_says_so(chain_memory):
    model = ScriptedModel({CHAIN: CHAIN_STEPS + "Step: Who is the mayor of #?\n"})
    answer = GraphRouter(model, chain_memory, max_hops=2).answer(CHAIN)
    assert len(hops(answer)) == 2 and answer.text == "Tromsø"
    assert any(s["step"] == "stop" and "max_hops" in s["reason"] for s in answer.trace)


def test_bad_options_are_named(memory):
    with pytest.raises(ValueError, match="max_hops"):
        GraphRouter(ScriptedModel({}), memory, max_hops=0)


def test_many_walks_batched_give_the_answers_of_one_at_a_time(chain_memory):
    questions = {CHAIN: CHAIN_STEPS, "Who employs Ada Brennick?": " Ada Brennick\nStep: Who employs #?\n",
                 "What is the capital of Norway?": " Norway\nStep: What is the capital of #?\n"}
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
        decomposition = next(s for s in answer.trace if s["step"] == "decompose")
        walk = hops(answer)
        assert answer.route in ("graph", "erase")
        assert len(walk) == max(1, min(len(decomposition["steps"]), 5)) or any(s["step"] == "stop" for s in answer.trace)
        assert answer.text == (walk[-1]["answer"] if walk else "")
    assert [a.text for a in edited.router.answer_many(questions, batch_size=2)] == [a.text for a in answers]
    chat = MemoryChatModel(chat_model=LocalChatModel(model=lm), memory=chain_memory, router="graph")
    reply = chat.invoke("Who employs Ada Brennick?")
    assert reply.response_metadata["memedit"]["route"] in ("graph", "erase")
