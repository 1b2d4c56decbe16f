"""A tour of memedit's memory: edits added, superseded, retracted, searched, per namespace.

Run: .venv/bin/python examples/demo.py   (uses a fresh database in a temporary folder)
"""

import tempfile
from pathlib import Path

from memedit import Edit, Memory


def show(title, hits):
    print(f"\n{title}")
    for hit in hits:
        print(f"  {hit.score:.3f}  [{hit.edit.namespace}] {hit.edit.statement}")
    if not hits:
        print("  (no edits in this namespace)")


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="memedit-demo-"))
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


if __name__ == "__main__":
    main()
