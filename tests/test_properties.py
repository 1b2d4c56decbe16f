"""Property tests (hypothesis) over what comes from outside: Edit fields, JSONL lines,
command-line arguments and search queries, text drawn with lone surrogates and control
characters. Every input either works or raises a MemeditError, and nothing stored is lost.

The suite runs 100 examples per target; ``bench/probe.py`` runs the same targets with 1,000
(``count_outcomes``) and counts the outcomes instead of stopping at the first failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memedit import Memory, MemeditError
from memedit.cli import main as cli_main

SUITE = settings(max_examples=100, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

ODD = st.sampled_from(["\ud800", "\udcff", "\udfff", "\x00", "\x1b", "\x7f", "\r", "\n", "\t", "\u2028", "\ufeff",
                       "\u200b", "{}", "{", "<|im_end|>", "</facts>", '"', "\\", " "])


def mostly(common: st.SearchStrategy, rare: st.SearchStrategy, tenths: int = 7) -> st.SearchStrategy:
    """``common`` about ``tenths`` times in ten, else ``rare`` (``one_of`` would flatten and weigh each branch alike)."""
    return st.integers(0, 9).flatmap(lambda i: common if i < tenths else rare)


PLAIN = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)
TEXT = mostly(PLAIN, st.lists(st.one_of(st.characters(exclude_categories=()), ODD), max_size=20).map("".join), 6)
VALUE = mostly(TEXT, st.one_of(st.none(), st.integers(), st.booleans(), st.floats(), st.lists(TEXT, max_size=3),
                               st.dictionaries(TEXT, TEXT, max_size=2)))
FIELDS = ("subject", "prompt", "target", "kind", "relation", "old_target", "statement", "aliases", "source",
          "supersedes", "id", "namespace", "created_at")
KIND = mostly(st.sampled_from(["insert", "modify", "erase"]), VALUE)
OVERRIDES = mostly(st.dictionaries(st.sampled_from([f for f in FIELDS if f not in ("kind", "namespace", "supersedes", "created_at")]), TEXT, max_size=2),
                   st.dictionaries(st.sampled_from(FIELDS + ("colour",)), VALUE, max_size=4))
EDIT_FIELDS = st.one_of(
    st.builds(lambda over: {"statement": "A plain fact.", **over}, OVERRIDES),
    st.builds(lambda over, kind: {"subject": "Spain", "prompt": "The capital of {} is", "target": "Seville", "kind": kind, **over},
              st.dictionaries(st.sampled_from(FIELDS), TEXT, max_size=2), KIND),
    OVERRIDES,
)
JSON_LINE = st.one_of(
    st.builds(lambda fields, status: json.dumps({**fields, **status}), EDIT_FIELDS,
              st.dictionaries(st.just("status"), st.one_of(st.sampled_from(["active", "retracted", "consolidated"]), VALUE), max_size=1)),
    TEXT,
    st.integers(1, 3_000).map(lambda n: '{"statement": ' + "[" * n + "]" * n + "}"),
)
JSONL = st.lists(JSON_LINE, min_size=1, max_size=4).map("\n".join)
OPTIONS = st.sampled_from(["--subject", "--prompt", "--target", "--kind", "--relation", "--old-target", "--alias", "--source",
                           "--supersedes", "--id", "--status", "--limit", "--offset", "-k", "--namespace", "-n", "--json", "--reason"])
ARGV = st.tuples(st.sampled_from(["add", "list", "search", "history", "retract", "stats"]),
                 st.lists(st.one_of(OPTIONS, TEXT, st.integers(-3, 2 ** 64).map(str)), max_size=6)).map(lambda t: [t[0], *t[1]])
QUERY = st.tuples(VALUE, mostly(st.integers(1, 10), st.one_of(st.integers(-3, 1_200), st.just(2 ** 63), VALUE)))


class Seeded:
    """A database in a fresh folder with two edits, and a check that they are still stored."""

    def __init__(self, embedder: Any, folder: str | None = None) -> None:
        self.folder = Path(folder or tempfile.mkdtemp(prefix="memedit-prop-"))
        self.db = str(self.folder / "prop.db")
        self.memory = Memory(self.db, embedder=embedder)
        edits = self.memory.add_many([dict(subject="France", prompt="The capital of {} is", target="Lyon"),
                                      dict(statement="The coffee machine is on the third floor.")])
        self.seeded = {e.id: e.statement for e in edits}

    def intact(self) -> bool:
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            rows = dict(conn.execute("SELECT id, statement FROM edits WHERE status = 'active'").fetchall())
        return self.seeded.items() <= rows.items()

    def count(self) -> int:
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            return conn.execute("SELECT count(*) FROM edits").fetchone()[0]

    def close(self) -> None:
        self.memory.close()


def outcome(call: Callable[[], Any]) -> str:
    """"ok", "named" (a MemeditError, or a command-line usage error), or "raw: <error>"."""
    try:
        call()
    except MemeditError:
        return "named"
    except SystemExit as exit_:  # argparse: a usage line and exit status 2
        return "named" if exit_.code == 2 else f"raw: SystemExit {exit_.code!r}"
    except Exception as err:  # noqa: BLE001 (the property: nothing else gets out)
        return f"raw: {type(err).__name__}: {err}"[:300]
    return "ok"


def check_edit_fields(seeded: Seeded, fields: dict[str, Any]) -> tuple[str, bool]:
    """Add an edit from these fields: it is stored as returned, or a MemeditError says why."""
    def add() -> None:
        stored = seeded.memory.add(fields)
        assert seeded.memory.get(stored.id).statement == stored.statement
    return outcome(add), seeded.intact()


def check_jsonl(seeded: Seeded, text: str) -> tuple[str, bool]:
    """Import these lines: all of them, or none and an ImportFailed."""
    before = seeded.count()
    result = outcome(lambda: seeded.memory.import_jsonl(io.StringIO(text)))
    expected = before + sum(1 for line in text.splitlines() if line.strip()) if result == "ok" else before
    return result, seeded.intact() and seeded.count() == expected


def check_cli(seeded: Seeded, argv: list[str]) -> tuple[str, bool]:
    """Run ``memedit --db DB ARGV`` in the database's folder, its output as strict UTF-8."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")

    def run() -> None:
        home = os.getcwd()
        os.chdir(seeded.folder)  # a relative path among the arguments lands beside the database
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                cli_main(["--db", seeded.db, *argv])
                out.flush()
        finally:
            os.chdir(home)
    return outcome(run), seeded.intact()


def check_search(seeded: Seeded, query_k: tuple[Any, Any]) -> tuple[str, bool]:
    query, k = query_k
    return outcome(lambda: seeded.memory.search(query, k=k)), seeded.intact()


TARGETS: dict[str, tuple[st.SearchStrategy, Callable[[Seeded, Any], tuple[str, bool]]]] = {
    "Edit fields": (EDIT_FIELDS, check_edit_fields),
    "JSONL lines": (JSONL, check_jsonl),
    "CLI arguments": (ARGV, check_cli),
    "search queries": (QUERY, check_search),
}


@pytest.fixture
def seeded(embedder, tmp_path):
    seeded = Seeded(embedder, str(tmp_path))
    yield seeded
    seeded.close()


def holds(result: tuple[str, bool]) -> None:
    kind, intact = result
    assert kind in ("ok", "named"), kind
    assert intact, "a stored edit was lost or changed"


@pytest.mark.parametrize("target", TARGETS)
@SUITE
@given(data=st.data())
def test_any_input_works_or_raises_a_named_error_and_loses_nothing(seeded, target, data):
    strategy, check = TARGETS[target]
    holds(check(seeded, data.draw(strategy, label=target)))


def count_outcomes(examples: int, embedder: Any = None) -> dict[str, Counter]:
    """Each target run with ``examples`` examples; per target, how many worked ("ok"), got a
    named error ("named"), a raw error ("raw") or lost a stored edit ("lost")."""
    from memedit.embeddings import get_embedder

    embedder = embedder or get_embedder()
    counts: dict[str, Counter] = {}
    for name, (strategy, check) in TARGETS.items():
        seeded, tally = Seeded(embedder), Counter()
        raws: list[str] = []

        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(value=strategy)
        def run(value: Any) -> None:
            result, intact = check(seeded, value)
            tally["raw" if result.startswith("raw") else result] += 1
            tally["lost"] += not intact
            if result.startswith("raw") and len(raws) < 5:
                raws.append(f"{result[:160]} <- {value!r:.160}")

        run()
        seeded.close()
        counts[name] = tally
        for line in raws:
            print(f"    {name}: {line}")
    return counts
