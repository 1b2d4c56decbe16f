"""The ``memedit`` command line: add, import, list, search, history, retract, export, stats,
ask and chat (a model answering through the memory), consolidate (into the weights), eval,
scope (train or evaluate the scope detector)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from .checks import unicode_problem
from .edit import Edit
from .errors import ImportFailed, MemeditError
from .memory import DEFAULT_DB, DEFAULT_NAMESPACE, Memory
from .param_editors.cli import cmd_consolidate
from .store import STATUSES, Event


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    """--db, --namespace and --json, accepted before or after the command."""
    parser = argparse.ArgumentParser(add_help=False)
    keep = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    parser.add_argument("--db", default=keep(os.environ.get("MEMEDIT_DB", DEFAULT_DB)),
                        help="database: an SQLite file or a postgresql:// URL (default: $MEMEDIT_DB or ./memedit.db)")
    parser.add_argument("--namespace", "-n", default=keep(os.environ.get("MEMEDIT_NAMESPACE", DEFAULT_NAMESPACE)),
                        help="namespace to read and write (default: $MEMEDIT_NAMESPACE or 'default')")
    parser.add_argument("--json", action="store_true", default=keep(False), help="print JSON instead of text")
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(defaults=False)
    parser = argparse.ArgumentParser(prog="memedit", parents=[_global_options(defaults=True)],
                                     description="A durable, namespaced memory of knowledge edits.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add = commands.add_parser("add", parents=[common], help="add one edit (a triple, or a free-text statement)",
                              description="Add a triple edit (--subject, --prompt, --target) or a free-text STATEMENT.")
    add.add_argument("statement", nargs="?", help="free-text statement (or the sentence form of a triple edit)")
    add.add_argument("--subject", help="the entity the edit is about, e.g. France")
    add.add_argument("--prompt", help="cloze template with {} for the subject, e.g. 'The capital of {} is'")
    add.add_argument("--target", help="the new answer, e.g. Lyon (none for --kind erase)")
    add.add_argument("--kind", choices=["insert", "modify", "erase"], help="default: modify with --old-target, else insert")
    add.add_argument("--relation", help="relation name (default: the prompt)")
    add.add_argument("--old-target", help="the answer this edit replaces")
    add.add_argument("--alias", action="append", default=[], help="another accepted name of the target (repeatable)")
    add.add_argument("--source", help="where the edit comes from (a user, a document...)")
    add.add_argument("--supersedes", help="id of an edit this one replaces")
    add.add_argument("--id", help="edit id (default: a new random id)")

    imp = commands.add_parser("import", parents=[common], help="import edits from a JSONL file (all or nothing)")
    imp.add_argument("file", help="JSONL file, one edit object a line ('-' for standard input)")
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")

    lst = commands.add_parser("list", parents=[common], help="list edits")
    lst.add_argument("--status", choices=[*STATUSES, "all"], default="active")
    lst.add_argument("--kind", choices=["insert", "modify", "erase"])
    lst.add_argument("--subject")
    lst.add_argument("--source")
    lst.add_argument("--limit", type=int)
    lst.add_argument("--offset", type=int, default=0)

    search = commands.add_parser("search", parents=[common], help="find the edits nearest to a question")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="number of hits (default 5)")

    hist = commands.add_parser("history", parents=[common], help="event log of one edit or of the namespace")
    hist.add_argument("id", nargs="?")
    hist.add_argument("--limit", type=int)

    retract = commands.add_parser("retract", parents=[common], help="retract an edit")
    retract.add_argument("id")
    retract.add_argument("--reason")

    export = commands.add_parser("export", parents=[common], help="write the namespace's edits as JSONL")
    export.add_argument("file", nargs="?", default="-", help="output file (default: standard output)")
    export.add_argument("--active-only", action="store_true", help="only active edits, without supersedes links")

    commands.add_parser("stats", parents=[common], help="counts of edits and events in the namespace")

    for name, help_ in (("ask", "answer one question through the memory, with the trace"),
                        ("chat", "a conversation through the memory: one message per input line; "
                                 "'remember that ...' teaches a fact")):
        sub = commands.add_parser(name, parents=[common], help=help_)
        if name == "ask":
            sub.add_argument("question")
        sub.add_argument("--model", default="smollm2-135m", help="packaged name or local path (default: smollm2-135m)")
        sub.add_argument("--router", choices=["ike", "serac"], default="serac", help="default: serac")
        sub.add_argument("--max-new-tokens", type=int, default=24 if name == "ask" else 96,
                         help="answer length bound (default: 24 for ask, 96 for chat)")

    from memedit.param_editors.cli import add_consolidate_parser
    add_consolidate_parser(commands, common)

    from memedit.eval.cli import add_eval_parser
    add_eval_parser(commands)

    from memedit.retrievers.scope_cli import add_scope_parser
    add_scope_parser(commands)

    from .serve_cli import add_serve_parsers
    add_serve_parsers(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    for i, arg in enumerate(argv, start=1):
        problem = unicode_problem(arg) if isinstance(arg, str) else None
        if problem:
            _error(f"argument {i} ({arg!r}) {problem}")
            return 2
    args = build_parser().parse_args(argv)
    try:
        if args.command == "eval":
            from memedit.eval.cli import cmd_eval
            return cmd_eval(args)
        if args.command == "scope":
            from memedit.retrievers.scope_cli import cmd_scope
            return cmd_scope(args)
        if args.command in ("serve", "keys"):
            from .serve_cli import cmd_keys, cmd_serve
            return (cmd_serve if args.command == "serve" else cmd_keys)(args)
        with Memory(args.db, namespace=args.namespace) as memory:
            return COMMANDS[args.command](memory, args)
    except ImportFailed as err:
        if args.json:
            print(json.dumps({"imported": 0, "errors": [{"line": n, "message": m} for n, m in err.errors]}))
        _error(str(err))
        return 1
    except (MemeditError, ValueError, OSError) as err:
        _error(str(err))
        return 1


def _error(message: str) -> None:
    """``memedit: error: message`` on standard error; characters it cannot encode are escaped."""
    line = f"memedit: error: {message}"
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    print(line.encode(encoding, "backslashreplace").decode(encoding, "replace"), file=sys.stderr)


# -- commands -----------------------------------------------------------------------


def cmd_add(memory: Memory, args: argparse.Namespace) -> int:
    edit = Edit(subject=args.subject, prompt=args.prompt, target=args.target, kind=args.kind,
                relation=args.relation, old_target=args.old_target, statement=args.statement,
                aliases=args.alias, source=args.source, supersedes=args.supersedes, id=args.id)
    stored = memory.add(edit)
    if args.json:
        _print_json(stored.to_dict())
    else:
        note = f" (supersedes {stored.supersedes})" if stored.supersedes else ""
        print(f"added {stored.id} to namespace {memory.namespace!r}: {stored.statement}{note}")
    return 0


def cmd_import(memory: Memory, args: argparse.Namespace) -> int:
    progress = not args.no_progress and not args.json
    stored = memory.import_jsonl(sys.stdin if args.file == "-" else args.file, progress=progress)
    if args.json:
        _print_json({"imported": len(stored), "namespace": memory.namespace, "ids": [e.id for e in stored]})
    else:
        print(f"imported {len(stored)} edits into namespace {memory.namespace!r}")
    return 0


def cmd_list(memory: Memory, args: argparse.Namespace) -> int:
    status = None if args.status == "all" else args.status
    edits = memory.list(status=status, kind=args.kind, subject=args.subject, source=args.source,
                        limit=args.limit, offset=args.offset)
    if args.json:
        _print_json([e.to_dict() for e in edits])
    else:
        _print_table(["id", "status", "kind", "statement"], [[e.id, e.status, e.kind, e.statement] for e in edits])
    return 0


def cmd_search(memory: Memory, args: argparse.Namespace) -> int:
    hits = memory.search(args.query, k=args.k)
    if args.json:
        _print_json([{"score": h.score, **h.edit.to_dict()} for h in hits])
    else:
        _print_table(["score", "id", "kind", "statement"], [[f"{h.score:.3f}", h.edit.id, h.edit.kind, h.edit.statement] for h in hits])
    return 0


def cmd_history(memory: Memory, args: argparse.Namespace) -> int:
    events = memory.history(args.id, limit=args.limit)
    if args.json:
        _print_json([e.to_dict() for e in events])
    else:
        _print_table(["seq", "at", "action", "edit", "detail"], [_event_row(e) for e in events])
    return 0


def cmd_retract(memory: Memory, args: argparse.Namespace) -> int:
    edit = memory.retract(args.id, reason=args.reason)
    if args.json:
        _print_json(edit.to_dict())
    else:
        print(f"retracted {edit.id}: {edit.statement}")
        if edit.supersedes and memory.get(edit.supersedes).status == "active":
            print(f"restored {edit.supersedes}, which it had superseded")
    return 0


def cmd_export(memory: Memory, args: argparse.Namespace) -> int:
    count = memory.export_jsonl(sys.stdout if args.file == "-" else args.file, active_only=args.active_only)
    if args.file != "-":
        print(json.dumps({"exported": count, "file": args.file}) if args.json else f"exported {count} edits to {args.file}")
    return 0


def cmd_stats(memory: Memory, args: argparse.Namespace) -> int:
    stats = memory.stats()
    if args.json:
        _print_json(stats)
    else:
        print(f"namespace  {stats['namespace']}\ndatabase   {stats['db']}")
        print(f"edits      {stats['edits']} ({', '.join(f'{n} {s}' for s, n in stats['by_status'].items())})")
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(stats["active_by_kind"].items())) or "none"
        print(f"active     {kinds}\nevents     {stats['events']}")
    return 0


def _edited(memory: Memory, args: argparse.Namespace, stop: tuple[str, ...]):
    from .edited_model import EditedModel

    return EditedModel(args.model, memory, router=args.router, stop=stop, max_new_tokens=args.max_new_tokens)


def cmd_ask(memory: Memory, args: argparse.Namespace) -> int:
    answer = _edited(memory, args, stop=("\n",)).ask(args.question)
    if args.json:
        _print_json({"text": answer.text, "route": answer.route, "edits_used": [e.id for e in answer.edits_used],
                     "trace": answer.trace})
        return 0
    print(answer.text)
    print(f"[route {answer.route}; edits {', '.join(e.id for e in answer.edits_used) or 'none'}]", file=sys.stderr)
    return 0


def cmd_chat(memory: Memory, args: argparse.Namespace) -> int:
    from .chat import ChatSession

    session = ChatSession(_edited(memory, args, stop=()))
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        if args.json:
            turn = session.send(line.strip())
            print(json.dumps({"user": turn.user, "reply": turn.reply, "route": turn.route,
                              "edits_used": [e.id for e in turn.edits_used],
                              "learned": turn.learned.id if turn.learned else None}, ensure_ascii=False), flush=True)
            continue
        print("bot> " if interactive else "", end="", flush=True)
        for piece in session.stream(line.strip()):
            print(piece, end="", flush=True)
        turn = session.turns[-1]
        print()
        print(f"[route {turn.route}; edits {', '.join(e.id for e in turn.edits_used) or 'none'}]", file=sys.stderr)


COMMANDS = {"add": cmd_add, "import": cmd_import, "list": cmd_list, "search": cmd_search,
            "history": cmd_history, "retract": cmd_retract, "export": cmd_export, "stats": cmd_stats,
            "ask": cmd_ask, "chat": cmd_chat, "consolidate": cmd_consolidate}


# -- output ---------------------------------------------------------------------------


def _event_row(event: Event) -> list[str]:
    detail = ", ".join(f"{k}={v}" for k, v in event.detail.items() if v not in (None, [], ""))
    return [str(event.seq), event.at[:19].replace("T", " "), event.action, event.edit_id or "", detail]


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


def _print_table(header: list[str], rows: list[list[str]], width: int = 100) -> None:
    if not rows:
        print("(none)")
        return
    cells = [header] + [[str(c) for c in row] for row in rows]
    sizes = [max(len(r[i]) for r in cells) for i in range(len(header) - 1)]
    for row in cells:
        lead = "  ".join(c.ljust(s) for c, s in zip(row, sizes))
        last = row[-1].replace("\n", " ")
        room = max(20, width - len(lead) - 2)
        print(f"{lead}  {last if len(last) <= room else last[:room - 1] + '…'}")


if __name__ == "__main__":
    sys.exit(main())
