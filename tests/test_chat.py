"""ChatSession on the local SmolLM2: facts taught mid-conversation, streaming, history, namespaces."""

from __future__ import annotations

import pytest

from memedit.chat import ChatSession, remembered_fact
from memedit.edited_model import EditedModel

CORRECTION = "From now on, remember that Alice's manager is Bob."
QUESTION = "Who is Alice's manager?"


def session_for(lm, memory, router="serac", **options) -> ChatSession:
    return ChatSession(EditedModel(lm, memory, router=router, stop=(), max_new_tokens=24), **options)


@pytest.mark.parametrize("message, fact", [
    ("From now on, remember that Alice's manager is Bob.", "Alice's manager is Bob."),
    ("remember: the office closes at 5 pm", "The office closes at 5 pm."),
    ("Please, remember that the wifi is 'guest'!", "The wifi is 'guest'."),
    ("What do you remember about Alice?", None),
    ("Remember", None),
    ("That is wrong. Remember that the lab head is Dana.", "The lab head is Dana."),
    ("Alice left the firm last year, as I said before. Remember that?", None),
    ("Remember that?", None),
    ("Remember: why is the sky blue?", None),
    ("I remember that Alice left.", None),
])
def test_remember_messages_are_recognised(message, fact):
    assert remembered_fact(message) == fact


@pytest.mark.slow
def test_a_correction_in_turn_1_is_used_in_turn_3_and_not_by_another_namespace(lm, open_memory, db_path):
    memory = open_memory(db_path, namespace="user-1")
    session = session_for(lm, memory)
    first = session.send(CORRECTION)
    assert first.route == "remember" and first.learned.statement == "Alice's manager is Bob."
    assert memory.get(first.learned.id).source == "chat"
    session.send("How many legs does a spider have?")
    third = session.send(QUESTION)
    assert third.route == "serac" and [e.id for e in third.edits_used] == [first.learned.id]
    assert "Bob" in third.reply

    other = session_for(lm, memory.with_namespace("user-2")).send(QUESTION)
    assert other.route == "base" and other.edits_used == []
    assert all(e["id"] != first.learned.id for step in other.trace for e in step.get("edits", []))


@pytest.mark.slow
def test_stream_yields_the_reply_in_pieces_and_records_the_turn(lm, memory):
    session = session_for(lm, memory, router="ike")
    session.remember(subject="Alice", prompt="{}'s manager is", target="Bob")
    for question, route in ((QUESTION, "ike"), ("Name three colours.", "base")):
        history = session.history()
        pieces = list(session.stream(question))
        turn = session.turns[-1]
        assert "".join(pieces) == turn.reply and turn.route == route and turn.user == question
        # the same question asked without streaming, after the same history, gets the same reply
        assert session.edited.ask(question, history).text == turn.reply
    assert len(pieces) > 1


@pytest.mark.slow
def test_history_feeds_the_model_but_not_the_taught_turns(lm, memory):
    session = session_for(lm, memory, history_turns=1)
    session.send(CORRECTION)
    session.send("My name is Zed.")
    turn = session.send("What is my name?")
    assert session.history()[0] == {"role": "user", "content": "What is my name?"}
    prompt = next(step["text"] for step in turn.trace if step["step"] == "prompt")
    assert "My name is Zed." in prompt and CORRECTION not in prompt


@pytest.mark.slow
def test_retracting_or_forgetting_takes_effect_at_once(lm, memory):
    session = session_for(lm, memory)
    learned = session.send(CORRECTION).learned
    memory.retract(learned.id)
    assert session.send(QUESTION).edits_used == []
    erase = session.forget(subject="Alice", prompt="{}'s manager is")
    turn = session.send(QUESTION)
    assert turn.route == "erase" and turn.reply == "I don't know." and turn.edits_used[0].id == erase.id


def test_bad_messages_and_settings_are_refused(lm, memory):
    with pytest.raises(ValueError, match="message must be non-empty text"):
        session_for(lm, memory).send("   ")
    with pytest.raises(ValueError, match="history_turns"):
        session_for(lm, memory, history_turns=-1)
    with pytest.raises(TypeError, match="EditedModel"):
        ChatSession(lm)
    assert memory.list() == [] and session_for(lm, memory).turns == []
