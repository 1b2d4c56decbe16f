"""Bad input from outside, counted: the probe set of issue 19 and the property targets.

Run it from the repository root:

    python bench/probe.py                    # the probe set, then 1,000 examples per property target
    python bench/probe.py --examples 200     # fewer examples
    python bench/probe.py --no-properties    # the probe set only

The probe set is a fixed list of bad inputs through the Python API and the command line
(run in-process through ``memedit.cli.main``, its output written as strict UTF-8, as a
terminal would): lone surrogates in every text field, the search query and through
``import``; deeply nested JSON lines; undecodable bytes in command-line arguments (as
Python passes them: surrogate escapes); damaged database pages; a schema version stored as
text; out-of-range and mistyped whole numbers; an empty database path; a read-only
database; a closed memory. Each outcome is one of ``ok`` (it worked), ``named`` (a
``MemeditError``), ``silent`` (an input that must be refused was accepted), ``unnamed`` (a
plain ValueError or TypeError from memedit's own checks: a message, but not a
MemeditError) or ``raw`` (any other exception, or, on the command line, an exception out
of ``main``: a raw traceback). A file written into the working folder (a relative path made
by mistake) is counted too. After each bad
input the edits stored before it are read back: ``lost`` counts the cases where one is
missing or changed. Targets: 0 raw, 0 silent, 0 lost.

The property targets are those of ``tests/test_properties.py`` (Edit fields, JSONL lines,
command-line arguments, search queries; text drawn with surrogates and control
characters), run here with ``--examples`` examples each, counting outcomes instead of
stopping at the first failure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from memedit import Memory, MemeditError
from memedit.cli import main as cli_main
from memedit.embeddings import get_embedder

SEEDS = [dict(subject="France", prompt="The capital of {} is", target="Lyon"),
         dict(statement="The coffee machine is on the third floor.")]
SURROGATE = "\ud800"
BAD_BYTE = os.fsdecode(b"caf\xff")  # how Python hands an undecodable argument to a program: "caf\udcff"
NESTED = "[" * 100_000 + "]" * 100_000
TEXT_FIELDS = ("statement", "subject", "prompt", "target", "old_target", "relation", "source", "id", "supersedes")


class Lab:
    """A fresh folder with a database holding ``SEEDS``, and the means to check they survive."""

    def __init__(self, embedder: Any) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="memedit-probe-"))
        self.db = str(self.dir / "probe.db")
        self.embedder = embedder
        with Memory(self.db, embedder=embedder) as memory:
            self.seeded = {e.id: e.statement for e in memory.add_many(SEEDS)}

    def memory(self, **kwargs: Any) -> Memory:
        return Memory(self.db, embedder=self.embedder, **kwargs)

    def survived(self) -> bool:
        """Every seeded edit is still in the file, active, with its statement (read with sqlite3 alone)."""
        try:
            with contextlib.closing(sqlite3.connect(self.db)) as conn:
                rows = conn.execute("SELECT id, statement FROM edits WHERE status = 'active'").fetchall()
        except sqlite3.Error:
            return False
        return self.seeded.items() <= dict(rows).items()

    def damage_pages(self) -> None:
        """Overwrite the database's pages after the first with garbage (the header stays intact)."""
        data = bytearray(Path(self.db).read_bytes())
        page = int.from_bytes(data[16:18], "big") or 65536
        for start in range(page, len(data), page):
            data[start + 8:start + page] = b"\xa5" * (page - 8)
        Path(self.db).write_bytes(bytes(data))

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def cli(lab: Lab, *argv: str) -> int:
    """``memedit --db LAB ...`` in-process, its output encoded as strict UTF-8; raises what escapes main."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(["--db", lab.db, *argv])
            out.flush()
            err.flush()
        except SystemExit as exit_:  # argparse's usage errors: a clear message, exit status 2
            code = exit_.code if isinstance(exit_.code, int) else 2
    return code


def jsonl(lab: Lab, *lines: str) -> str:
    path = lab.dir / "in.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def with_memory(action: Callable[[Memory], Any], **kwargs: Any) -> Callable[[Lab], Any]:
    def run(lab: Lab) -> Any:
        with lab.memory(**kwargs) as memory:
            return action(memory)
    return run


def schema_as_text(lab: Lab) -> Any:
    with sqlite3.connect(lab.db) as conn:
        conn.execute("UPDATE meta SET value = 'two' WHERE key = 'schema_version'")
    conn.close()
    return lab.memory().close()


def damaged(action: Callable[[Lab], Any]) -> Callable[[Lab], Any]:
    def run(lab: Lab) -> Any:
        lab.damage_pages()
        return action(lab)
    return run


def read_only(action: Callable[[Lab], Any]) -> Callable[[Lab], Any]:
    """``action`` on a database its user may not write (as root: run it as ``nobody``)."""
    def run(lab: Lab) -> Any:
        if os.geteuid() != 0:
            os.chmod(lab.db, 0o444)
            return action(lab)
        return _as_nobody(lab, action.__name__)
    run.__name__ = action.__name__
    return run


def _as_nobody(lab: Lab, name: str) -> Any:
    os.chmod(lab.dir, 0o755)
    for path in lab.dir.iterdir():
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import probe; "
            f"from memedit import Memory, MemeditError\n"
            f"try:\n    probe.READ_ONLY[{name!r}]({lab.db!r})\n"
            f"except MemeditError as err:\n    print('named', type(err).__name__, err)\n"
            f"except Exception as err:\n    print('raw', type(err).__name__, err)\nelse:\n    print('ok')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                          capture_output=True, text=True, env=env, timeout=300)
    verdict = (done.stdout.strip().splitlines() or ["raw (no output) " + done.stderr[-300:]])[-1]
    if verdict.startswith("named"):
        raise ProbeNamed(verdict)
    if verdict.startswith("raw"):
        raise RuntimeError(verdict)
    return None


class ProbeNamed(MemeditError):
    """The outcome of a probe run in another process: a MemeditError there."""


def ro_add(db: str) -> None:
    with Memory(db, embedder=get_embedder()) as memory:
        memory.add(statement="A new fact.")


def ro_search(db: str) -> None:
    with Memory(db, embedder=get_embedder()) as memory:
        memory.search("capital of France")


READ_ONLY = {"ro_add": ro_add, "ro_search": ro_search}


def cases() -> list[tuple[str, str, str, Callable[[Lab], Any]]]:
    """(kind, name, expect, action): expect is "error" (must be refused) or "either"."""
    out: list[tuple[str, str, str, Callable[[Lab], Any]]] = []
    add = lambda **fields: with_memory(lambda m: m.add(**fields))  # noqa: E731
    triple = dict(subject="Spain", prompt="The capital of {} is", target="Seville")
    for field in TEXT_FIELDS:
        base = dict(triple) if field in ("subject", "prompt", "target", "old_target", "relation") else dict(statement="A fact.")
        if field == "old_target":
            base["kind"] = "modify"
        value = "The capital of {} is" + SURROGATE if field == "prompt" else "x" + SURROGATE
        out.append(("surrogate in a field", f"add {field}", "error", add(**{**base, field: value})))
    out.append(("surrogate in a field", "add aliases[0]", "error", add(**triple, aliases=["x" + SURROGATE])))
    out.append(("surrogate in a field", "Memory namespace", "error", with_memory(lambda m: m.list(), namespace="n" + SURROGATE)))
    out.append(("surrogate in a field", "with_namespace", "error", with_memory(lambda m: m.with_namespace(SURROGATE).list())))
    out.append(("surrogate in a field", "retract reason", "error",
                with_memory(lambda m: m.retract(m.list()[0].id, reason="r" + SURROGATE))))
    for name, action in (("search", lambda m: m.search("capital " + SURROGATE)),
                         ("search bad byte", lambda m: m.search(BAD_BYTE)),
                         ("get", lambda m: m.get(SURROGATE)), ("retract", lambda m: m.retract(SURROGATE)),
                         ("history", lambda m: m.history(SURROGATE)),
                         ("list subject", lambda m: m.list(subject=SURROGATE)),
                         ("list source", lambda m: m.list(source=SURROGATE)),
                         ("list kind", lambda m: m.list(kind=SURROGATE))):
        out.append(("surrogate in a query", name, "error", with_memory(action)))
    for field in ("statement", "subject", "id", "source", "aliases"):
        value = json.dumps(["x\ud800"]) if field == "aliases" else '"x\\ud800"'
        line = '{"statement": "A fact.", ' + f'"{field}": {value}' + "}"
        if field == "subject":
            line = '{"subject": "x\\ud800", "prompt": "The capital of {} is", "target": "Rome"}'
        out.append(("surrogate through import", f"import {field}", "error", lambda lab, line=line: _import(lab, line)))
        out.append(("surrogate through import", f"memedit import {field}", "error",
                    lambda lab, line=line: _cli_import(lab, line)))
    out.append(("surrogate through import", "import from a text stream", "error",
                with_memory(lambda m: m.import_jsonl(io.StringIO('{"statement": "x' + SURROGATE + '"}\n')))))
    for name, line in (("array", NESTED), ("in a field", '{"statement": ' + NESTED + "}"),
                       ("object", '{"a":' * 50_000 + "1" + "}" * 50_000)):
        out.append(("deeply nested JSON", f"import nested {name}", "error",
                    with_memory(lambda m, line=line: m.import_jsonl(io.StringIO(line + "\n")))))
        out.append(("deeply nested JSON", f"memedit import nested {name}", "error", lambda lab, line=line: _cli_import(lab, line)))
    for name, argv in (("add statement", ["add", BAD_BYTE]), ("add --subject", ["add", "--subject", BAD_BYTE, "--prompt", "{} is", "--target", "x"]),
                       ("add --source", ["add", "A fact.", "--source", BAD_BYTE]), ("add --id", ["add", "A fact.", "--id", BAD_BYTE]),
                       ("search", ["search", BAD_BYTE]), ("retract", ["retract", BAD_BYTE]), ("history", ["history", BAD_BYTE]),
                       ("--namespace", ["-n", BAD_BYTE, "list"]), ("list --subject", ["list", "--subject", BAD_BYTE]),
                       ("import path", ["import", BAD_BYTE]), ("export path", ["export", str(Path("/nonexistent") / BAD_BYTE)])):
        out.append(("undecodable CLI argument", f"memedit {name}", "error", lambda lab, argv=argv: _cli_must_fail(lab, *argv)))
    out.append(("undecodable CLI argument", "memedit --db", "error", lambda lab: _cli_must_fail_db(lab, str(lab.dir / BAD_BYTE))))
    for name, action in (("search", with_memory(lambda m: m.search("capital of France"))),
                         ("add", with_memory(lambda m: m.add(statement="A new fact."))),
                         ("list", with_memory(lambda m: m.list())), ("stats", with_memory(lambda m: m.stats())),
                         ("history", with_memory(lambda m: m.history())),
                         ("memedit search", lambda lab: _cli_must_fail(lab, "search", "capital of France")),
                         ("memedit add", lambda lab: _cli_must_fail(lab, "add", "A new fact.")),
                         ("memedit list", lambda lab: _cli_must_fail(lab, "list"))):
        out.append(("damaged database pages", name, "error", damaged(action)))
    out.append(("schema version as text", "open", "error", schema_as_text))
    out.append(("schema version as text", "memedit list", "error",
                lambda lab: (schema_as_text_only(lab), _cli_must_fail(lab, "list"))))
    big = 2 ** 63
    for name, action in (("list limit 2**63", lambda m: m.list(limit=big)), ("list offset 2**63", lambda m: m.list(offset=big)),
                         ("list limit -1", lambda m: m.list(limit=-1)), ("list limit 'x'", lambda m: m.list(limit="x")),
                         ("list limit 1.5", lambda m: m.list(limit=1.5)), ("list offset True", lambda m: m.list(offset=True)),
                         ("history limit 2**63", lambda m: m.history(limit=big)), ("history limit 'x'", lambda m: m.history(limit="x")),
                         ("history limit -5", lambda m: m.history(limit=-5)), ("history limit 1.0", lambda m: m.history(limit=1.0)),
                         ("search k 2**63", lambda m: m.search("x", k=big)), ("search k 0", lambda m: m.search("x", k=0)),
                         ("search k '3'", lambda m: m.search("x", k="3")), ("search k None", lambda m: m.search("x", k=None)),
                         ("list status bogus", lambda m: m.list(status="bogus")),
                         ("search empty", lambda m: m.search("  ")), ("search None", lambda m: m.search(None)),
                         ("search bytes", lambda m: m.search(b"capital")),
                         ("add edit and fields", lambda m: m.add({"statement": "A."}, source="x")),
                         ("add a number", lambda m: m.add(42)), ("add_many a number", lambda m: m.add_many(42)),
                         ("add unknown field", lambda m: m.add({"statement": "A.", "colour": "red"})),
                         ("add statement 5", lambda m: m.add(statement=5)),
                         ("retract reason 5", lambda m: m.retract(m.list()[0].id, reason=5)),
                         ("get id 5", lambda m: m.get(5)), ("history id 5", lambda m: m.history(5))):
        out.append(("bad whole number or type", name, "error", with_memory(action)))
    for name, argv in (("list --limit 2**63", ["list", "--limit", str(big)]), ("list --offset 2**63", ["list", "--offset", str(big)]),
                       ("list --limit -1", ["list", "--limit", "-1"]), ("history --limit -5", ["history", "--limit", "-5"]),
                       ("history --limit 2**63", ["history", "--limit", str(big)]), ("search -k 2**63", ["search", "x", "-k", str(big)]),
                       ("search -k 0", ["search", "x", "-k", "0"])):
        out.append(("bad whole number or type", f"memedit {name}", "error", lambda lab, argv=argv: _cli_must_fail(lab, *argv)))
    out.append(("empty or odd database path", "Memory('')", "error", lambda lab: Memory("", embedder=lab.embedder).close()))
    out.append(("empty or odd database path", "Memory(' ')", "error", lambda lab: Memory("  ", embedder=lab.embedder).close()))
    out.append(("empty or odd database path", "Memory(None)", "error", lambda lab: Memory(None, embedder=lab.embedder).close()))
    out.append(("empty or odd database path", "Memory(a folder)", "error", lambda lab: Memory(str(lab.dir), embedder=lab.embedder).close()))
    out.append(("empty or odd database path", "Memory(missing folder)", "error",
                lambda lab: Memory(str(lab.dir / "no" / "such.db"), embedder=lab.embedder).close()))
    out.append(("empty or odd database path", "Memory(not sqlite)", "error", lambda lab: _not_sqlite(lab)))
    out.append(("empty or odd database path", "memedit --db ''", "error", lambda lab: _cli_must_fail_db(lab, "")))
    out.append(("read-only database", "add", "error", read_only(ro_add)))
    out.append(("read-only database", "search", "either", read_only(ro_search)))
    out.append(("closed memory", "search after close", "error", lambda lab: _closed(lab).search("capital")))
    out.append(("closed memory", "add after close", "error", lambda lab: _closed(lab).add(statement="A new fact.")))
    for name, value in (("escape sequence", "\x1b[31mred\x1b[0m"), ("carriage return", "a\rb"), ("line separator", "a\u2028b"),
                        ("BOM", "\ufeffA fact."), ("zero-width", "A\u200bfact."), ("NUL", "A\x00fact.")):
        out.append(("control characters", f"add {name}", "error" if "\x00" in value else "either", add(statement=value)))
        out.append(("control characters", f"search {name}", "either", with_memory(lambda m, value=value: m.search(value))))
    return out


def _closed(lab: Lab) -> Memory:
    memory = lab.memory()
    memory.close()
    return memory


def _import(lab: Lab, line: str) -> None:
    with lab.memory() as memory:
        memory.import_jsonl(jsonl(lab, line))


def _cli_import(lab: Lab, line: str) -> None:
    if cli(lab, "import", jsonl(lab, line), "--no-progress") == 0:
        raise Silent("imported a bad line")
    raise ProbeNamed("refused")


def _cli_must_fail(lab: Lab, *argv: str) -> None:
    code = cli(lab, *argv)
    if code == 0:
        raise Silent(f"exit 0 for {argv}")
    raise ProbeNamed(f"exit {code}")


def _cli_must_fail_db(lab: Lab, db: str) -> None:
    code = cli_main_db(db)
    if code == 0:
        raise Silent(f"exit 0 for --db {db!r}")
    raise ProbeNamed(f"exit {code}")


def cli_main_db(db: str) -> int:
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli_main(["--db", db, "add", "A fact."])
        out.flush()
    return code


def schema_as_text_only(lab: Lab) -> None:
    with sqlite3.connect(lab.db) as conn:
        conn.execute("UPDATE meta SET value = 'two' WHERE key = 'schema_version'")
    conn.close()


def _not_sqlite(lab: Lab) -> None:
    path = lab.dir / "text.db"
    path.write_text("not a database\n" * 100)
    Memory(str(path), embedder=lab.embedder).close()


class Silent(Exception):
    """A bad input went through."""


def classify(run: Callable[[], Any], expect: str) -> tuple[str, str]:
    """(outcome, detail) of one probe. A ValueError or TypeError raised by memedit's own checks
    is "unnamed" (a clear message, but not a MemeditError); any other exception is "raw"."""
    try:
        run()
    except (Silent,) as err:
        return "silent", str(err)
    except MemeditError as err:
        return "named", f"{type(err).__name__}: {str(err)[:120]}"
    except BaseException as err:  # noqa: BLE001 (the point is to count them)
        if isinstance(err, KeyboardInterrupt):
            raise
        frame = traceback.extract_tb(err.__traceback__)[-1]
        own = isinstance(err, (ValueError, TypeError)) and type(err) in (ValueError, TypeError) and "/memedit/" in frame.filename.replace("\\", "/")
        return "unnamed" if own else "raw", f"{type(err).__name__}: {str(err)[:100]} ({Path(frame.filename).name}:{frame.lineno})"
    return ("silent", "accepted") if expect == "error" else ("ok", "")


def run_probe_set(embedder: Any, verbose: bool) -> Counter:
    totals: Counter = Counter()
    by_kind: dict[str, Counter] = {}
    home = os.getcwd()
    for kind, name, expect, action in cases():
        lab = Lab(embedder)
        cwd = lab.dir / "cwd"
        cwd.mkdir()
        os.chdir(cwd)  # a relative path written by mistake lands here, and is counted
        try:
            outcome, detail = classify(lambda: action(lab), expect)
        finally:
            os.chdir(home)
        lost = kind != "damaged database pages" and not lab.survived()
        stray = sorted(p.name for p in cwd.iterdir())
        lab.close()
        totals[outcome] += 1
        totals["lost"] += lost
        totals["stray"] += bool(stray)
        by_kind.setdefault(kind, Counter())[outcome] += 1
        if verbose or outcome in ("raw", "unnamed", "silent") or lost or stray:
            note = ("LOST " if lost else "") + (f"WROTE {stray} " if stray else "")
            print(f"  {outcome:7} {note}{kind} / {name}: {detail}")
    print("\nprobe set, by kind:")
    for kind, counts in by_kind.items():
        print(f"  {kind:28} " + ", ".join(f"{n} {o}" for o, n in sorted(counts.items())))
    return totals


def run_properties(examples: int) -> dict[str, Counter]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_properties  # noqa: E402 (the same targets as the test suite)

    return test_properties.count_outcomes(examples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1_000, help="hypothesis examples per property target (default 1000)")
    parser.add_argument("--no-properties", action="store_true", help="run the probe set only")
    parser.add_argument("--verbose", action="store_true", help="print every probe, not only the failures")
    args = parser.parse_args(argv)
    embedder = get_embedder()
    totals = run_probe_set(embedder, args.verbose)
    n = sum(totals[o] for o in ("ok", "named", "raw", "unnamed", "silent"))
    print(f"\nprobe set: {n} bad inputs: {totals['raw']} raw tracebacks, {totals['unnamed']} memedit ValueError/TypeError "
          f"(not MemeditError), {totals['silent']} silently accepted, {totals['named']} named errors, {totals['ok']} worked; "
          f"stored edits lost in {totals['lost']}, files written outside the database's folder in {totals['stray']}")
    if not args.no_properties:
        print(f"\nproperty targets, {args.examples} examples each:")
        for target, counts in run_properties(args.examples).items():
            print(f"  {target:22} raw {counts['raw']}, lost {counts['lost']}, named {counts['named']}, worked {counts['ok']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
