"""The LangChain plugin: langchain-tests' standard suites for the retriever and the tools, and
the chat-model wrapper routing through the memory, checked with langchain-core's fake chat models."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeListChatModel, ParrotFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_tests.integration_tests import RetrieversIntegrationTests, ToolsIntegrationTests
from langchain_tests.unit_tests import ToolsUnitTests

from conftest import HashEmbedder
from memedit import Memory
from memedit.adapters.langchain import (ForgetFact, LangChainBackend, LocalChatModel, MemoryChatModel, MemoryRetriever,
                                        RememberFact, RetractEdit, SearchMemory, memory_tools)
from memedit.chat import ChatSession
from memedit.edited_model import EditedModel

FACTS = [dict(subject="Alice", prompt="{}'s manager is", target="Bob"),
         dict(subject="the Acme office", prompt="{} is located in", target="Lyon"),
         dict(statement="The project codename is Bluebird."),
         dict(subject="Carol", prompt="{} works as a", target="pilot")]

_standard_memory: Memory | None = None


def standard_memory() -> Memory:
    """A memory with a few edits for the standard suites (their fixtures cannot take ours)."""
    global _standard_memory
    if _standard_memory is None:
        folder = Path(tempfile.mkdtemp(prefix="memedit-lc-"))
        _standard_memory = Memory(folder / "standard.db", namespace="agent", embedder=HashEmbedder())
        for fact in FACTS:
            _standard_memory.add(**fact)
    return _standard_memory


# -- langchain-tests standard suites -------------------------------------------------------
class TestMemoryRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self):
        return MemoryRetriever

    @property
    def retriever_constructor_params(self):
        return {"memory": standard_memory(), "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return "Who is Alice's manager?"


class _ToolSuite:
    tool_class = None
    example: dict = {}

    @property
    def tool_constructor(self):
        return self.tool_class

    @property
    def tool_constructor_params(self):
        return {"memory": standard_memory()}

    @property
    def tool_invoke_params_example(self):
        return self.example


class TestRememberFactUnit(_ToolSuite, ToolsUnitTests):
    tool_class, example = RememberFact, {"statement": "The cafeteria opens at 8."}


class TestRememberFactIntegration(_ToolSuite, ToolsIntegrationTests):
    tool_class, example = RememberFact, {"subject": "Dave", "prompt": "{} lives in", "target": "Oslo"}


class TestForgetFactUnit(_ToolSuite, ToolsUnitTests):
    tool_class, example = ForgetFact, {"statement": "The launch date is 3 May."}


class TestForgetFactIntegration(_ToolSuite, ToolsIntegrationTests):
    tool_class, example = ForgetFact, {"subject": "Erin", "prompt": "{}'s salary is"}


class TestRetractEditUnit(_ToolSuite, ToolsUnitTests):
    tool_class, example = RetractEdit, {"edit_id": "no-such-edit"}


class TestRetractEditIntegration(_ToolSuite, ToolsIntegrationTests):
    tool_class, example = RetractEdit, {"edit_id": "no-such-edit", "reason": "testing"}


class TestSearchMemoryUnit(_ToolSuite, ToolsUnitTests):
    tool_class, example = SearchMemory, {"query": "manager", "k": 2}


class TestSearchMemoryIntegration(_ToolSuite, ToolsIntegrationTests):
    tool_class, example = SearchMemory, {"query": "Where is the office?"}


# -- our own checks ------------------------------------------------------------------------
@pytest.fixture
def facts_memory(open_memory, db_path):
    memory = open_memory(db_path, namespace="agent")
    for fact in FACTS:
        memory.add(**fact)
    return memory


class Recorder(BaseCallbackHandler):
    """Records the messages each chat model call receives."""

    def __init__(self) -> None:
        self.calls: list[list] = []

    def on_chat_model_start(self, serialized, messages, **kwargs) -> None:
        self.calls.extend(messages)


def test_retriever_documents_carry_the_edit_and_score(facts_memory):
    docs = MemoryRetriever(memory=facts_memory, k=3).invoke("Who is Alice's manager?")
    best = docs[0]
    edit = facts_memory.get(best.metadata["id"])
    assert best.page_content == edit.statement == "Alice's manager is Bob."
    assert best.metadata["target"] == "Bob" and best.metadata["namespace"] == "agent"
    assert [d.metadata["score"] for d in docs] == sorted((d.metadata["score"] for d in docs), reverse=True)
    assert MemoryRetriever(memory=facts_memory, k=3, min_score=best.metadata["score"]).invoke("Who is Alice's manager?") == [best]


async def test_retriever_async_matches_sync_and_keeps_namespaces(facts_memory):
    retriever = MemoryRetriever(memory=facts_memory, k=2)
    assert await retriever.ainvoke("Where is the office?") == retriever.invoke("Where is the office?")
    assert MemoryRetriever(memory=facts_memory.with_namespace("someone-else")).invoke("Alice's manager") == []


def test_retriever_rejects_bad_k_and_memory(facts_memory):
    with pytest.raises(ValueError, match="k must be"):
        MemoryRetriever(memory=facts_memory, k=0)
    with pytest.raises(ValueError, match="memory must be a memedit.Memory"):
        MemoryRetriever(memory="memory.db")


def test_tools_act_on_the_memory(facts_memory):
    remember, forget, retract, search = memory_tools(facts_memory)
    said = remember.invoke({"subject": "Alice", "prompt": "{}'s manager is", "target": "Dana", "old_target": "Bob"})
    new = facts_memory.list(subject="Alice")[0]
    assert new.target == "Dana" and new.id in said and new.supersedes in said
    assert new.id in search.invoke({"query": "Alice's manager", "k": 1})
    retract.invoke({"edit_id": new.id, "reason": "wrong"})
    assert facts_memory.list(subject="Alice")[0].target == "Bob"
    forget.invoke({"statement": "The project codename is Bluebird."})
    assert [e.kind for e in facts_memory.list(kind="erase")] == ["erase"]


def test_tool_errors_reach_the_agent_as_text(facts_memory):
    remember, forget, retract, search = memory_tools(facts_memory)
    before = facts_memory.stats()
    call = {"name": "retract_edit", "args": {"edit_id": "missing"}, "id": "call-1", "type": "tool_call"}
    message = retract.invoke(call)
    assert isinstance(message, ToolMessage) and "no edit with id 'missing'" in message.content
    assert "prompt" in remember.invoke({"subject": "Alice", "target": "Eve"})  # names the missing field
    assert "statement" in forget.invoke({})
    assert "k" in search.invoke({"query": "x", "k": 0}) and "greater than or equal to 1" in search.invoke({"query": "x", "k": 0})
    assert "query is empty" in search.invoke({"query": "  "})
    assert facts_memory.stats() == before  # nothing stored, nothing lost


def test_chat_model_routes_in_scope_questions_through_the_edit(facts_memory):
    wrapped = MemoryChatModel(chat_model=ParrotFakeChatModel(), memory=facts_memory)
    reply = wrapped.invoke([SystemMessage("Be brief."), HumanMessage("Who is Alice's manager?")])
    meta = reply.response_metadata["memedit"]
    alice = facts_memory.list(subject="Alice")[0]
    assert meta["route"] == "serac" and meta["edits_used"] == [alice.id]
    assert '"Alice\'s manager is Bob."' in reply.content and "<facts>" in reply.content  # quoted, delimited


def test_chat_model_leaves_out_of_scope_questions_untouched(facts_memory):
    recorder = Recorder()
    inner = FakeListChatModel(responses=["Blue."], callbacks=[recorder])
    wrapped = MemoryChatModel(chat_model=inner, memory=facts_memory)
    messages = [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello!"), HumanMessage("What colour is the sky?")]
    reply = wrapped.invoke(messages)
    assert reply.content == "Blue." and reply.response_metadata["memedit"]["route"] == "base"
    assert recorder.calls == [messages]


def test_chat_model_keeps_streaming_and_batching(facts_memory):
    recorder = Recorder()
    inner = FakeListChatModel(responses=["Bob, I am told."], callbacks=[recorder])
    wrapped = MemoryChatModel(chat_model=inner, memory=facts_memory, router="ike")
    chunks = list(wrapped.stream("Who is Alice's manager?"))
    assert "".join(c.content for c in chunks) == "Bob, I am told." and len(chunks) > 3
    whole = sum(chunks[1:], chunks[0])
    assert whole.response_metadata["memedit"]["route"] == "ike"
    assert "Alice's manager is Bob." in recorder.calls[0][-1].content

    recorder.calls.clear()
    replies = wrapped.batch(["Who is Alice's manager?", "What colour is the sky?"])
    assert [r.response_metadata["memedit"]["route"] for r in replies] == ["ike", "base"]
    assert len(recorder.calls) == 2 and recorder.calls[1] == [HumanMessage("What colour is the sky?")]


async def test_chat_model_async_and_erase_refusal(facts_memory):
    recorder = Recorder()
    wrapped = MemoryChatModel(chat_model=FakeListChatModel(responses=["Lyon."], callbacks=[recorder]), memory=facts_memory)
    reply = await wrapped.ainvoke("Where is the Acme office located?")
    assert reply.response_metadata["memedit"]["route"] == "serac" and "Lyon" in recorder.calls[0][-1].content
    facts_memory.add(kind="erase", subject="the Acme office", prompt="{} is located in")
    recorder.calls.clear()
    pieces = [c.content async for c in wrapped.astream("Where is the Acme office located?")]
    assert "".join(pieces) == "I don't know." and recorder.calls == []  # refused without calling the model


def test_chat_model_never_sees_another_namespace(facts_memory):
    other = facts_memory.with_namespace("someone-else")
    wrapped = MemoryChatModel(chat_model=ParrotFakeChatModel(), memory=other)
    reply = wrapped.invoke("Who is Alice's manager?")
    assert reply.content == "Who is Alice's manager?" and reply.response_metadata["memedit"]["edits_used"] == []


def test_chat_model_passes_through_tool_turns(facts_memory):
    recorder = Recorder()
    wrapped = MemoryChatModel(chat_model=FakeListChatModel(responses=["ok"], callbacks=[recorder]), memory=facts_memory)
    messages = [HumanMessage("Who is Alice's manager?"), AIMessage("", tool_calls=[{"name": "search_memory", "args": {"query": "Alice"}, "id": "1"}]),
                ToolMessage("Alice's manager is Bob.", tool_call_id="1")]
    reply = wrapped.invoke(messages)
    assert reply.response_metadata["memedit"]["route"] == "base" and recorder.calls == [messages]


def test_multi_hop_router_runs_on_a_chat_model(facts_memory):
    """PokeMQA through MemoryChatModel: the wrapped model writes each step; the detector, not
    the model, decides that the sub-question hits Alice's edit, which is quoted into the next call."""
    from memedit.retrievers.scope import EmbeddingScope

    recorder = Recorder()
    steps = ["Sub-question: Who is Alice's manager?", "Bob", "Final answer: Bob"]
    detector = EmbeddingScope(facts_memory.embedder, threshold=0.7)
    wrapped = MemoryChatModel(chat_model=FakeListChatModel(responses=steps, callbacks=[recorder]), memory=facts_memory,
                              router="pokemqa", router_options={"detector": detector})
    reply = wrapped.invoke("Who manages Alice?")
    meta = reply.response_metadata["memedit"]
    alice = facts_memory.list(subject="Alice")[0]
    assert reply.content == "Bob" and meta["route"] == "pokemqa" and meta["edits_used"] == [alice.id]
    assert len(recorder.calls) == 3 and 'Memory fact: "Alice\'s manager is Bob."\nAnswer:' in recorder.calls[1][-1].content
    with pytest.raises(ValueError, match="router must be one that works through prompts alone"):
        MemoryChatModel(chat_model=ParrotFakeChatModel(), memory=facts_memory, router="grace")


def test_black_box_backend_runs_a_chat_session(facts_memory):
    """ChatSession and the routers work on any LangChain chat model, through LangChainBackend."""
    recorder = Recorder()
    backend = LangChainBackend(FakeListChatModel(responses=["Bob\nand more"], callbacks=[recorder]))
    session = ChatSession(EditedModel(backend, facts_memory, router="serac"))
    turn = session.send("Who is Alice's manager?")
    assert turn.reply == "Bob" and turn.route == "serac"  # the router's stop string cut the rest
    assert [(m.type, m.content) for m in recorder.calls[0]][0][0] == "system"
    assert "Alice's manager is Bob." in recorder.calls[0][-1].content


class SlowParrot(ParrotFakeChatModel):
    """Replies with the last message after a short wait, recording how many calls overlap."""

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        import threading
        import time

        with LOCK:
            FLIGHT["now"] += 1
            FLIGHT["most"] = max(FLIGHT["most"], FLIGHT["now"])
        time.sleep(0.15)
        with LOCK:
            FLIGHT["now"] -= 1
        assert isinstance(threading.current_thread(), threading.Thread)
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


import threading  # noqa: E402

LOCK = threading.Lock()
FLIGHT = {"now": 0, "most": 0}


def test_black_box_backend_sends_a_batch_as_bounded_concurrent_calls():
    from memedit.models import Prompt, Request
    from memedit.retrievers.steps import Failed, run_many

    FLIGHT.update(now=0, most=0)
    backend = LangChainBackend(SlowParrot())
    requests = [Request(Prompt("", f"reply {i}. second line {i}"), 8, (".",) if i % 2 else ("\n",)) for i in range(9)]
    texts = backend.generate_many(requests, batch_size=3)
    assert texts == [f"reply {i}" if i % 2 else f"reply {i}. second line {i}" for i in range(9)]
    assert FLIGHT["most"] == 3  # parallel work, never more than batch_size at once
    # the scheduler drives black-box models the same way: one bad request fails alone
    def machine(text):
        return (yield Request(Prompt("", text), 8, ()))
    results = run_many(backend, [machine("fine"), machine(""), machine("also fine")], batch_size=3)
    assert results[0] == "fine" and results[2] == "also fine" and isinstance(results[1], Failed)


def test_local_chat_model_streams_what_the_model_generates(lm):
    chat = LocalChatModel(model=lm, max_new_tokens=12)
    pieces = [c.content for c in chat.stream([HumanMessage("Name three colours.")])]
    expected = lm.generate(lm.chat([{"role": "user", "content": "Name three colours."}]), max_new_tokens=12, stop=())
    assert "".join(pieces) == expected and len([p for p in pieces if p]) > 1
    assert chat.invoke("Name three colours.").content == expected


@pytest.mark.slow
def test_example_agent_uses_a_correction_three_turns_later(lm, tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / "chat_agent.py"
    spec = importlib.util.spec_from_file_location("chat_agent", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    turns = example.run(db=tmp_path / "agent.db")
    (_, first, first_route), (_, stored, tool), *_, (question, last, last_route) = turns
    assert question == turns[0][0] and first_route == "base" and "Dana Reyes" not in first
    assert tool == "tool:remember_fact" and "Remembered edit" in stored
    assert last_route == "serac" and "Dana Reyes" in last
    with Memory(tmp_path / "agent.db", namespace="agent-1") as memory:
        assert [e.statement for e in memory.list()] == ["The head of the Zorvath research lab is Dana Reyes."]
