"""The LangGraph store over a memory: BaseStore's contract (get, put, supersede, delete, search,
list_namespaces, async), namespace isolation, bad values, and a LangGraph graph on SmolLM2
whose tools read and write the memory through ``runtime.store``."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, ToolRuntime
from langgraph.store.base import GetOp, InvalidNamespaceError, ListNamespacesOp, PutOp, SearchOp

from conftest import HashEmbedder
from memedit import Memory
from memedit.adapters.langchain import LocalChatModel
from memedit.adapters.langgraph import (MemeditStore, NamespaceLabelError, StoreKeyError, StoreQueryError, StoreValueError,
                                        to_langgraph, to_memedit)
from memedit.chat import remembered_fact
from memedit.errors import ConflictError, MemeditError

ALICE, BOB = ("users", "alice"), ("users", "bob")
CAPITAL = {"subject": "France", "prompt": "The capital of {} is", "target": "Lyon"}
COFFEE = {"statement": "The coffee machine is on the third floor."}


@pytest.fixture
def memory(tmp_path):
    memory = Memory(tmp_path / "store.db", embedder=HashEmbedder())
    yield memory
    memory.close()


@pytest.fixture
def store(memory):
    return MemeditStore(memory)


def ns(memory: Memory, namespace: tuple[str, ...]) -> Memory:
    return memory.with_namespace(to_memedit(namespace))


# -- get, put, supersede, delete ---------------------------------------------------------------
def test_put_of_a_triple_is_an_edit_and_get_returns_its_value(store, memory):
    store.put(ALICE, "capital", CAPITAL)
    item = store.get(ALICE, "capital")
    assert (item.namespace, item.key, item.value) == (ALICE, "capital", CAPITAL)
    assert item.created_at == item.updated_at and item.created_at.tzinfo is not None
    [edit] = ns(memory, ALICE).list()
    assert (edit.id, edit.namespace, edit.statement) == ("capital#1", "users.alice", "The capital of France is Lyon.")
    assert store.get(ALICE, "other") is None and store.get(BOB, "capital") is None


def test_put_over_a_key_supersedes_and_keeps_history(store, memory):
    store.put(ALICE, "capital", CAPITAL)
    first = store.get(ALICE, "capital")
    changed = first.value | {"target": "Nice"}  # a value read back can be changed and put again
    store.put(ALICE, "capital", changed)
    item = store.get(ALICE, "capital")
    assert item.value == changed and item.created_at == first.created_at and item.updated_at > first.updated_at
    alice = ns(memory, ALICE)
    old, new = alice.list(status=None)
    assert (old.status, old.superseded_by, new.status, new.supersedes) == ("superseded", new.id, "active", old.id)
    assert new.statement == "The capital of France is Nice."  # derived anew, not carried over
    assert [e.action for e in alice.history(old.id)] == ["add", "supersede"]


def test_delete_retracts_every_version_and_a_new_put_starts_afresh(store, memory):
    store.put(ALICE, "capital", CAPITAL)
    store.put(ALICE, "capital", CAPITAL | {"target": "Nice"})
    store.put(ALICE, "coffee", COFFEE)
    store.delete(ALICE, "capital")
    assert store.get(ALICE, "capital") is None  # the older version did not come back
    assert [i.key for i in store.search(ALICE, query="capital of France")] == ["coffee"]
    alice = ns(memory, ALICE)
    assert [(e.id, e.status) for e in alice.list(status=None)] == [
        ("capital#1", "retracted"), ("capital#2", "retracted"), ("coffee#1", "active")]
    store.delete(ALICE, "capital")  # deleting what is not there is no error
    store.put(ALICE, "capital", CAPITAL)
    again = store.get(ALICE, "capital")
    assert again.value == CAPITAL and again.created_at == again.updated_at
    assert again.created_at.isoformat() == alice.get("capital#3").created_at > alice.get("capital#2").created_at
    assert alice.get("capital#3").supersedes is None


def test_a_triple_under_another_key_supersedes_by_memedits_rule(store):
    store.put(ALICE, "capital", CAPITAL)
    store.put(ALICE, "capital-2", CAPITAL | {"target": "Nice"})  # same subject and relation
    assert store.get(ALICE, "capital") is None
    assert store.get(ALICE, "capital-2").value["target"] == "Nice"
    store.delete(ALICE, "capital-2")  # retracting the newer edit restores the one it replaced
    assert store.get(ALICE, "capital").value == CAPITAL


def test_statements_and_text_values(store, memory):
    store.put(ALICE, "coffee", COFFEE)
    store.put(ALICE, "wifi", {"text": "The wifi password changes every Monday.", "source": "onboarding"})
    assert store.get(ALICE, "coffee").value == COFFEE
    assert store.get(ALICE, "wifi").value == {"statement": "The wifi password changes every Monday.", "source": "onboarding"}
    erase = {"subject": "Erin", "prompt": "{}'s salary is", "kind": "erase"}
    store.put(ALICE, "salary", erase)
    assert store.get(ALICE, "salary").value == erase
    assert ns(memory, ALICE).get("salary#1").statement == "Erin's salary is [erased]"


def test_an_edit_added_outside_the_store_is_read_under_its_id(store, memory):
    added = ns(memory, ALICE).add(statement="The office closes at 6 pm.")
    assert store.get(ALICE, added.id).value == {"statement": "The office closes at 6 pm."}
    store.put(ALICE, added.id, {"statement": "The office closes at 7 pm."})
    assert ns(memory, ALICE).get(added.id).status == "superseded"
    assert store.get(ALICE, added.id).value == {"statement": "The office closes at 7 pm."}
    assert ("default",) not in store.list_namespaces()
    memory.add(statement="Jupiter has 12 moons.")
    assert ("default",) in store.list_namespaces()
    assert [i.value for i in store.search(("default",))] == [{"statement": "Jupiter has 12 moons."}]


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value, field", [
    ({"name": "Bob", "age": 3}, "name"),
    ({}, "statement"),
    ({"subject": "France", "target": "Lyon"}, "prompt"),
    ({"subject": "France", "prompt": "The capital of France is", "target": "Lyon"}, "prompt"),
    ({"statement": "x", "id": "mine"}, "id"),
    ({"statement": "x", "text": "y"}, "text"),
    ({"statement": 42}, "statement"),
    ({"statement": "x", "aliases": "NYC"}, "aliases"),
    (["not", "a", "dict"], "(value)"),
])
def test_a_value_that_is_not_an_edit_is_refused_naming_the_field(store, memory, value, field):
    store.put(ALICE, "capital", CAPITAL)
    with pytest.raises(StoreValueError) as err:
        store.put(ALICE, "capital", value)
    assert err.value.field == field and f"{field}:" in str(err.value) and "a value is an edit" in str(err.value)
    assert isinstance(err.value, MemeditError)
    assert store.get(ALICE, "capital").value == CAPITAL and len(ns(memory, ALICE).list(status=None)) == 1


def test_a_batch_with_one_bad_op_writes_nothing(store):
    with pytest.raises(StoreValueError):
        store.batch([PutOp(ALICE, "coffee", COFFEE), PutOp(ALICE, "bad", {"colour": "red"})])
    with pytest.raises(NamespaceLabelError):
        store.batch([PutOp(ALICE, "coffee", COFFEE), PutOp((" padded",), "k", COFFEE)])
    assert store.get(ALICE, "coffee") is None and store.list_namespaces() == []


@pytest.mark.parametrize("namespace, error", [
    (("users.alice",), InvalidNamespaceError),  # a period would make the mapping ambiguous
    (("users", ""), InvalidNamespaceError),
    (("users", " alice "), NamespaceLabelError),  # memedit strips the ends of a name
    (("x" * 120, "y" * 100), NamespaceLabelError),  # over memedit's 200 characters
    ((), NamespaceLabelError),
])
def test_namespaces_memedit_cannot_hold_are_refused(store, namespace, error):
    for op in (PutOp(namespace, "k", COFFEE), GetOp(namespace, "k")):
        with pytest.raises(error):
            store.batch([op])
    assert store.list_namespaces() == []


@pytest.mark.parametrize("key", ["", " padded", "k\x00", "k" * 1000, 7])
def test_keys_that_cannot_name_an_edit_are_refused(store, key):
    with pytest.raises(StoreKeyError):
        store.batch([PutOp(ALICE, key, COFFEE)])


def test_ttl_and_bad_search_arguments_are_refused(store):
    with pytest.raises(NotImplementedError):
        store.put(ALICE, "coffee", COFFEE, ttl=5)
    store.put(ALICE, "coffee", COFFEE)
    with pytest.raises(StoreQueryError, match=r"\$like"):
        store.search(ALICE, filter={"statement": {"$like": "coffee"}})
    with pytest.raises(StoreQueryError, match="limit"):
        store.search(ALICE, limit=-1)
    with pytest.raises(StoreQueryError, match="max_depth"):
        store.list_namespaces(max_depth=-2)
    with pytest.raises(StoreQueryError, match="query"):
        store.search(ALICE, query="  ")
    assert store.get(ALICE, "coffee").value == COFFEE


def test_namespace_names_map_both_ways():
    assert to_memedit(("users", "alice", "prefs")) == "users.alice.prefs"
    assert to_langgraph("users.alice.prefs") == ("users", "alice", "prefs")
    assert to_langgraph("default") == ("default",) and to_langgraph("a..b") is None


# -- isolation ---------------------------------------------------------------------------------
def test_a_namespace_never_sees_another(store, memory):
    store.put(ALICE, "capital", CAPITAL)
    store.put(BOB, "capital", CAPITAL | {"target": "Marseille"})  # same triple, other namespace: no supersede
    store.put(("users", "alice2"), "capital", CAPITAL | {"target": "Nice"})
    assert store.get(ALICE, "capital").value["target"] == "Lyon"
    assert store.get(BOB, "capital").value["target"] == "Marseille"
    for namespace, target in ((ALICE, "Lyon"), (BOB, "Marseille")):
        found = store.search(namespace, query="What is the capital of France?") + store.search(namespace)
        assert {(i.namespace, i.value["target"]) for i in found} == {(namespace, target)}
    store.delete(BOB, "capital")
    assert store.get(ALICE, "capital").value["target"] == "Lyon"
    assert ns(memory, ALICE).list()[0].status == "active"
    # A prefix covers the namespaces below it, as BaseStore defines; each item keeps its own.
    below = store.search(("users",), query="capital of France")
    assert sorted((i.namespace, i.value["target"]) for i in below) == [(ALICE, "Lyon"), (("users", "alice2"), "Nice")]


# -- search ------------------------------------------------------------------------------------
@pytest.fixture
def filled(store):
    store.put(ALICE, "capital", CAPITAL)
    store.put(ALICE, "coffee", COFFEE)
    store.put(ALICE, "manager", {"subject": "Alice", "prompt": "{}'s manager is", "target": "Bob"})
    store.put(ALICE, "salary", {"subject": "Erin", "prompt": "{}'s salary is", "kind": "erase"})
    store.put(("users", "alice", "work"), "office", {"statement": "The office is in Lyon.", "source": "hr"})
    return store


def test_search_with_a_query_is_the_memorys_search(filled, memory):
    hits = filled.search(ALICE, query="Who is Alice's manager?", limit=3)
    below = [h for name in ("users.alice", "users.alice.work") for h in memory.with_namespace(name).search("Who is Alice's manager?", k=3)]
    expected = sorted(below, key=lambda h: -h.score)[:3]  # the prefix covers the namespace below it too
    assert [(h.key, h.score) for h in hits] == [(e.edit.id.split("#")[0], pytest.approx(e.score)) for e in expected]
    assert hits[0].key == "manager" and hits[0].score > hits[1].score
    assert [h.key for h in filled.search(ALICE, query="Who is Alice's manager?", limit=2, offset=1)] == [h.key for h in hits[1:3]]
    only = filled.search(ALICE, query="Who is Alice's manager?", filter={"kind": "erase"})
    assert [h.key for h in only] == ["salary"]


def test_search_without_a_query_lists_with_filter_limit_offset(filled):
    everything = filled.search(ALICE)
    assert [i.key for i in everything] == ["capital", "coffee", "manager", "salary", "office"]
    assert {i.score for i in everything} == {None}
    assert [i.key for i in filled.search(ALICE, limit=2, offset=1)] == ["coffee", "manager"]
    assert [i.key for i in filled.search(ALICE, filter={"subject": "France"})] == ["capital"]
    assert [i.key for i in filled.search(ALICE, filter={"statement": "The coffee machine is on the third floor."})] == ["coffee"]
    assert [i.key for i in filled.search(ALICE, filter={"kind": {"$ne": "insert"}})] == ["salary"]
    assert [i.key for i in filled.search((), filter={"source": "hr"})] == ["office"]
    assert filled.search(("users", "alice", "work"))[0].namespace == ("users", "alice", "work")
    assert filled.search(("nobody",)) == []


def test_list_namespaces_honours_prefix_suffix_depth_limit_offset(store):
    for namespace in [("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"), ("a", "b", "f"), ("a", "c", "f"), ("z",)]:
        store.put(namespace, "k", COFFEE)
    assert store.list_namespaces(prefix=("a", "b"), max_depth=3) == [("a", "b", "c"), ("a", "b", "d"), ("a", "b", "f")]
    assert store.list_namespaces(suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("a",), suffix=("*", "i")) == [("a", "b", "d", "i")]
    assert store.list_namespaces(max_depth=1) == [("a",), ("z",)]
    assert store.list_namespaces(limit=2, offset=1) == [("a", "b", "d", "e"), ("a", "b", "d", "i")]
    store.delete(("z",), "k")
    assert ("z",) not in store.list_namespaces()


async def test_abatch_and_the_async_methods(store):
    results = await store.abatch([PutOp(ALICE, "capital", CAPITAL), GetOp(ALICE, "capital"),
                                  SearchOp(ALICE, query="capital of France"), ListNamespacesOp()])
    assert results[0] is None and results[1].value == CAPITAL
    assert [i.key for i in results[2]] == ["capital"] and results[3] == [ALICE]
    await store.aput(BOB, "coffee", COFFEE)
    assert (await store.aget(BOB, "coffee")).value == COFFEE
    assert [i.key for i in await store.asearch(("users",), query="coffee machine", limit=1)] == ["coffee"]
    await store.adelete(BOB, "coffee")
    assert await store.aget(BOB, "coffee") is None and await store.alist_namespaces() == [ALICE]
    with pytest.raises(StoreValueError):
        await store.aput(BOB, "bad", {"colour": "red"})


# -- the memory pieces the store stands on ---------------------------------------------------
def test_retract_many_is_one_transaction(memory):
    a, b = memory.add(statement="Fact one."), memory.add(statement="Fact two.")
    memory.retract(b.id)
    with pytest.raises(ConflictError):
        memory.retract_many([a.id, b.id])
    assert memory.get(a.id).status == "active"
    assert [e.status for e in memory.retract_many([a.id])] == ["retracted"]


def test_list_by_id_prefix_and_namespaces(memory):
    for edit_id in ("k#1", "k#2", "k", "kk#1", "j#1"):
        memory.add(statement=f"Fact {edit_id}.", id=edit_id)
    assert [e.id for e in memory.list(id_prefix="k#")] == ["k#1", "k#2"]
    memory.with_namespace("other").add(statement="Elsewhere.")
    memory.with_namespace("gone").retract(memory.with_namespace("gone").add(statement="Gone.").id)
    assert memory.namespaces() == ["default", "other"]
    with pytest.raises(ValueError, match="id_prefix"):
        memory.list(id_prefix="")


# -- a LangGraph graph on SmolLM2 --------------------------------------------------------------
@dataclass
class User:
    name: str


@tool
def remember(statement: str, runtime: ToolRuntime[User]) -> str:
    """Store a fact the user taught."""
    key = uuid.uuid4().hex
    runtime.store.put(("agent", runtime.context.name), key, {"statement": statement, "source": "graph"})
    return f"Stored as {key}."


@tool
def recall(query: str, runtime: ToolRuntime[User]) -> str:
    """The stored fact nearest to the query."""
    items = runtime.store.search(("agent", runtime.context.name), query=query, limit=1)
    return items[0].value["statement"] if items else "Nothing stored."


def agent_graph(chat_model, store: MemeditStore):
    """A tool-using graph. SmolLM2-135M cannot emit tool calls reliably, so the planning node
    makes the call a tool-calling model would make; the tools run in LangGraph's ToolNode
    and reach the memory through ``runtime.store``; the model answers from what they return."""

    def plan(state: MessagesState) -> dict:
        text = state["messages"][-1].text
        fact = remembered_fact(text)
        call = {"name": "remember", "args": {"statement": fact}} if fact else {"name": "recall", "args": {"query": text}}
        return {"messages": [AIMessage("", tool_calls=[call | {"id": uuid.uuid4().hex}])]}

    def answer(state: MessagesState) -> dict:
        *_, question, call, result = state["messages"]
        if call.tool_calls[0]["name"] == "remember":
            return {"messages": [AIMessage(result.text)]}
        prompt = [SystemMessage(f"Answer in one sentence using this fact: {result.text}"), HumanMessage(question.text)]
        return {"messages": [chat_model.invoke(prompt)]}

    graph = StateGraph(MessagesState, context_schema=User)
    graph.add_node("plan", plan)
    graph.add_node("tools", ToolNode([remember, recall]))
    graph.add_node("answer", answer)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "tools")
    graph.add_edge("tools", "answer")
    graph.add_edge("answer", END)
    return graph.compile(store=store)


@pytest.mark.slow
def test_a_langgraph_agent_learns_and_answers_through_the_store(lm, memory, store):
    app = agent_graph(LocalChatModel(model=lm, max_new_tokens=16), store)

    def ask(text: str) -> tuple[str, str]:
        """(what the tool returned, the reply) for one user message."""
        *_, result, reply = app.invoke({"messages": [HumanMessage(text)]}, context=User("dana-fan"))["messages"]
        return result.text, reply.text

    question = "Who is the head of the Zorvath research lab?"
    before = ask(question)
    assert before[0] == "Nothing stored." and "Dana Reyes" not in before[1]  # the model does not know it
    assert ask("Remember that the head of the Zorvath research lab is Dana Reyes.")[1].startswith("Stored as ")
    [item] = store.search(("agent", "dana-fan"))
    assert item.value == {"statement": "The head of the Zorvath research lab is Dana Reyes.", "source": "graph"}
    assert memory.with_namespace("agent.dana-fan").get(f"{item.key}#1").statement == item.value["statement"]
    assert store.search(("agent", "someone-else"), query=question) == []
    found, reply = ask(question)
    assert found == item.value["statement"] and "Dana Reyes" in reply
    store.delete(("agent", "dana-fan"), item.key)
    assert ask(question) == before  # the store no longer delivers it: the same prompt, the same answer


def test_the_readme_langgraph_example_runs(tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## LangGraph store\n.*?```python\n(.*?)```", readme, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    target, statuses, answer = capsys.readouterr().out.splitlines()
    assert (target, statuses) == ("Nice", "['superseded', 'active']") and answer.startswith("Nice (score 0.")
