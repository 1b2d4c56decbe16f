"""A tour of memedit: a small model answering through a memory of edits, then the memory itself.

Part 1, on SmolLM2-135M with the default router (``ike``): teach a fact, ask it in other
words, ask something unrelated (the model's own answer), correct the fact (the correction
supersedes it), retract the correction and then the fact, erase a fact (the question is
refused), and ask a two-hop question (the edit is its first hop). Each answer prints its route and the
edits it used, and whether it holds the answer the edits imply: the answers are the
model's own, and a 135M model gets some wrong.

Part 2, the memory alone: edits added, superseded, retracted, searched, per namespace.

Run: .venv/bin/python examples/demo.py   (uses fresh databases in a temporary folder; about a minute on 2 cores)
"""

import tempfile
import time
from pathlib import Path

from memedit import Edit, EditedModel, Memory, load_model

TOWER = dict(subject="Eiffel Tower", prompt="The {} is located in the city of")


def ask(edited: EditedModel, question: str, expect: str | None = None) -> None:
    """Ask, and print the answer with its route, the edits it used and, with ``expect``, whether it holds that."""
    answer = edited.ask(question)
    used = ", ".join(e.statement for e in answer.edits_used) or "none"
    print(f"\nQ: {question}\nA: {answer.text.strip()!r}\n   route: {answer.route}; edits used: {used}")
    if expect is not None:
        verdict = "yes" if expect.casefold() in answer.text.casefold() else "no: the model missed it"
        print(f"   holds {expect!r}? {verdict}")


def model_part(folder: Path) -> None:
    started = time.perf_counter()
    model = load_model("smollm2-135m")
    with Memory(folder / "model.db", namespace="demo") as memory:
        edited = EditedModel(model, memory)  # the default router, ike
        print(f"SmolLM2-135M loaded; router: {edited.router.name}")

        print("\n-- teach a fact, then ask it in other words")
        fact = memory.add(**TOWER, target="Rome", old_target="Paris")
        print(f"added {fact.id}: {fact.statement}")
        ask(edited, "Which city is the Eiffel Tower in?", expect="Rome")

        print("\n-- something unrelated: the unedited model answers (route base)")
        ask(edited, "Who wrote the play Romeo and Juliet?")

        print("\n-- correct the fact: the new edit supersedes the old one")
        fix = memory.add(**TOWER, target="London")
        print(f"added {fix.id}: {fix.statement} (supersedes {fix.supersedes}; {fact.id} is now "
              f"{memory.get(fact.id).status})")
        ask(edited, "Where is the Eiffel Tower?", expect="London")

        print("\n-- retract the correction (the fact it replaced applies again), then the fact")
        memory.retract(fix.id, reason="wrong city")
        print(f"retracted {fix.id}; {fact.id} is {memory.get(fact.id).status} again")
        ask(edited, "Where is the Eiffel Tower?", expect="Rome")
        memory.retract(fact.id)
        print(f"retracted {fact.id}: no edit applies")
        ask(edited, "Where is the Eiffel Tower?")

        print("\n-- erase a fact: a question about it is refused")
        memory.add(subject="Mount Everest", prompt="The height of {} is", kind="erase")
        ask(edited, "How tall is Mount Everest?", expect=edited.router.refusal)

        print("\n-- a two-hop question: the edit gives the first hop, the model's own knowledge the second")
        memory.add(subject="Lionel Messi", prompt="{} plays for the team", target="Juventus")
        ask(edited, "In which country is the club that Lionel Messi plays for?", expect="Italy")

        print("\nhistory of namespace 'demo':")
        for event in memory.history():
            print(f"  #{event.seq} {event.action:<9} {event.edit_id}")
    print(f"\n(part 1 took {time.perf_counter() - started:.0f} s)")


def show(title, hits):
    print(f"\n{title}")
    for hit in hits:
        print(f"  {hit.score:.3f}  [{hit.edit.namespace}] {hit.edit.statement}")
    if not hits:
        print("  (no edits in this namespace)")


def memory_part(folder: Path) -> None:
    with Memory(folder / "demo.db") as memory:  # namespace "default"
        print(f"database: {memory.path}")
        memory.add_many([
            Edit(subject="United Kingdom", prompt="The prime minister of {} is", target="Ada Lovelace",
                 old_target="Keir Starmer", source="demo"),
            Edit(subject="Lionel Messi", prompt="{} plays for the team", target="Juventus", kind="modify"),
            Edit(subject="Mount Everest", prompt="The height of {} is", kind="erase"),
            Edit(statement="The office coffee machine is on the third floor."),
        ])
        print(f"added {memory.stats()['by_status']['active']} edits to namespace 'default'")
        show("search 'Who leads the British government?'", memory.search("Who leads the British government?", k=2))

        newer = memory.add(subject="united kingdom", prompt="The prime minister of {} is", target="Grace Hopper")
        print(f"\nadded {newer.id}: {newer.statement} (supersedes {newer.supersedes})")
        show("search again", memory.search("Who is the UK prime minister?", k=1))

        memory.retract(newer.id, reason="entered by mistake")
        show(f"after retracting {newer.id}, the older edit is active again", memory.search("Who is the UK prime minister?", k=1))

        print("\nhistory of the namespace:")
        for event in memory.history():
            print(f"  #{event.seq} {event.action:<9} {event.edit_id}  {event.detail}")

        alice = memory.with_namespace("alice")
        alice.add(subject="Alice", prompt="{}'s manager is", target="Bob", source="chat")
        show("namespace 'alice', search 'Who is Alice's manager?'", alice.search("Who is Alice's manager?", k=3))
        show("namespace 'default', same search (alice's edit is invisible here)", memory.search("Who is Alice's manager?", k=1))
        show("namespace 'bob', same search", memory.with_namespace("bob").search("Who is Alice's manager?", k=3))


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="memedit-demo-"))
    print("== part 1: a model answering through the memory ==")
    model_part(folder)
    print("\n== part 2: the memory ==")
    memory_part(folder)


if __name__ == "__main__":
    main()
