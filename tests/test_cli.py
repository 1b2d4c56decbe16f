"""The memedit CLI, run in-process through cli.main (and once as the installed console script)."""

import json
import shutil
import subprocess
import sys

import pytest

from memedit import Memory
from memedit.cli import main


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "cli.db")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def add_triple(capsys, db, subject, prompt, target, *extra):
    return run_json(capsys, "--db", db, "add", "--subject", subject, "--prompt", prompt, "--target", target, *extra)


def test_add_list_get_fields_round_trip(capsys, db):
    added = add_triple(capsys, db, "France", "The capital of {} is", "Lyon", "--old-target", "Paris", "--alias", "Lugdunum")
    assert added["kind"] == "modify" and added["statement"] == "The capital of France is Lyon."
    listed = run_json(capsys, "--db", db, "list")
    assert [e["id"] for e in listed] == [added["id"]]
    assert listed[0]["aliases"] == ["Lugdunum"] and listed[0]["old_target"] == "Paris"
    # global options are accepted after the command as well as before it
    code, out, _ = run(capsys, "list", "--db", db)
    assert code == 0 and added["id"] in out


def test_search_ranks_the_matching_edit_first(capsys, db):
    add_triple(capsys, db, "Lionel Messi", "{} plays for", "Juventus")
    coffee = run_json(capsys, "--db", db, "add", "The coffee machine is on the third floor.")
    hits = run_json(capsys, "--db", db, "search", "Where can I get coffee?", "-k", "2")
    assert [h["id"] for h in hits][0] == coffee["id"]
    assert hits[0]["score"] > hits[1]["score"]


def test_namespaces_are_isolated(capsys, db):
    mine = add_triple(capsys, db, "Alice", "{}'s manager is", "Bob", "--namespace", "alice")
    assert run_json(capsys, "--db", db, "-n", "bob", "list") == []
    assert run_json(capsys, "--db", db, "-n", "bob", "search", "Who is Alice's manager?") == []
    code, _, err = run(capsys, "--db", db, "-n", "bob", "retract", mine["id"])
    assert code == 1 and "namespace 'bob'" in err and mine["id"] in err
    code, _, err = run(capsys, "--db", db, "-n", "bob", "history", mine["id"])
    assert code == 1 and mine["id"] in err
    still = run_json(capsys, "--db", db, "-n", "alice", "list")
    assert [(e["id"], e["status"]) for e in still] == [(mine["id"], "active")]


def test_supersede_retract_and_history(capsys, db):
    first = add_triple(capsys, db, "UK", "The prime minister of {} is", "Ada")
    second = add_triple(capsys, db, "uk", "The prime minister of {} is", "Grace")
    assert second["supersedes"] == first["id"]
    code, out, _ = run(capsys, "--db", db, "retract", second["id"], "--reason", "typo")
    assert code == 0 and f"restored {first['id']}" in out
    events = run_json(capsys, "--db", db, "history", second["id"])
    assert [e["action"] for e in events] == ["add", "retract"]
    assert events[1]["detail"]["reason"] == "typo"
    actions = [e["action"] for e in run_json(capsys, "--db", db, "history", first["id"])]
    assert actions == ["add", "supersede", "restore"]
    assert [e["id"] for e in run_json(capsys, "--db", db, "list")] == [first["id"]]
    code, _, err = run(capsys, "--db", db, "retract", second["id"])
    assert code == 1 and "already retracted" in err


def test_import_with_a_bad_line_imports_nothing_and_names_the_line(capsys, db, tmp_path):
    existing = add_triple(capsys, db, "France", "The capital of {} is", "Lyon")
    path = tmp_path / "edits.jsonl"
    lines = [
        {"statement": "Water boils at 90 degrees here."},
        {"subject": "Spain", "prompt": "The capital of {} is", "target": "Seville"},
        {"subject": "Italy", "prompt": "The capital of Italy is", "target": "Milan"},  # no {}
        {"statement": "fine"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    code, out, err = run(capsys, "--db", db, "import", path, "--no-progress")
    assert code == 1
    assert "line 3" in err and "prompt" in err and "line 5" in err and "JSON" in err
    assert "line 1" not in err and "line 2" not in err
    assert [e["id"] for e in run_json(capsys, "--db", db, "list", "--status", "all")] == [existing["id"]]

    code, out, err = run(capsys, "--db", db, "import", path, "--json")
    report = json.loads(out)
    assert code == 1 and report["imported"] == 0
    assert [e["line"] for e in report["errors"]] == [3, 5]

    path.write_text("\n".join(json.dumps(x) for i, x in enumerate(lines) if i != 2) + "\n")
    code, out, err = run(capsys, "--db", db, "import", path)
    assert code == 0 and "imported 3 edits" in out
    assert "embedding" in err  # the progress bar
    assert len(run_json(capsys, "--db", db, "list")) == 4


def test_export_import_round_trip_between_databases(capsys, db, tmp_path):
    a = add_triple(capsys, db, "France", "The capital of {} is", "Lyon")
    b = add_triple(capsys, db, "France", "The capital of {} is", "Nice")  # supersedes a
    c = run_json(capsys, "--db", db, "add", "Bob likes tea.")
    run(capsys, "--db", db, "retract", c["id"])
    out_file = tmp_path / "dump.jsonl"
    assert run_json(capsys, "--db", db, "export", out_file)["exported"] == 3
    other = str(tmp_path / "other.db")
    assert run_json(capsys, "--db", other, "-n", "copy", "import", out_file)["imported"] == 3
    original = {e["id"]: e["status"] for e in run_json(capsys, "--db", db, "list", "--status", "all")}
    copied = {e["id"]: e["status"] for e in run_json(capsys, "--db", other, "-n", "copy", "list", "--status", "all")}
    assert copied == original == {a["id"]: "superseded", b["id"]: "active", c["id"]: "retracted"}


def test_stats_counts(capsys, db):
    add_triple(capsys, db, "France", "The capital of {} is", "Lyon")
    add_triple(capsys, db, "Everest", "The height of {} is", "9000 m", "--kind", "modify")
    run_json(capsys, "--db", db, "-n", "other", "add", "Not counted in default.")
    stats = run_json(capsys, "--db", db, "stats")
    assert stats["edits"] == 2 and stats["by_status"]["active"] == 2
    assert stats["active_by_kind"] == {"insert": 1, "modify": 1}


@pytest.mark.parametrize("argv, words", [
    (["add", "--subject", "France", "--prompt", "capital", "--target", "x"], ["prompt", "{}"]),
    (["add", "--subject", "France", "--prompt", "{} is", "--kind", "erase", "--target", "x"], ["target", "erase"]),
    (["add"], ["statement"]),
    (["search", "   "], ["query"]),
    (["search", "hello", "-k", "0"], ["k must"]),
    (["list", "--limit", "-3"], ["limit must"]),
    (["list", "--offset", "-1"], ["offset must"]),
    (["retract", "nope"], ["nope", "namespace 'default'"]),
])
def test_bad_input_gets_a_clear_error_and_loses_nothing(capsys, db, argv, words):
    kept = run_json(capsys, "--db", db, "add", "Kept safely.")
    code, _, err = run(capsys, "--db", db, *argv)
    assert code == 1 and err.startswith("memedit: error:")
    for word in words:
        assert word in err
    assert [e["id"] for e in run_json(capsys, "--db", db, "list", "--status", "all")] == [kept["id"]]


def test_installed_console_script_uses_env_defaults(tmp_path):
    exe = shutil.which("memedit") or str(__import__("pathlib").Path(sys.executable).parent / "memedit")
    env = {"MEMEDIT_DB": str(tmp_path / "env.db"), "MEMEDIT_NAMESPACE": "team", "PATH": "/usr/bin:/bin"}
    Memory(env["MEMEDIT_DB"], namespace="team").close()
    result = subprocess.run([exe, "stats", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["namespace"] == "team" and stats["db"] == env["MEMEDIT_DB"] and stats["edits"] == 0


def test_unopenable_database_is_a_clear_error(capsys, tmp_path):
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("just some notes, not SQLite\n" * 100)
    code, _, err = run(capsys, "--db", not_a_db, "list")
    assert code == 1 and "cannot open the memedit database" in err and "notes.db" in err
    assert not_a_db.read_text().startswith("just some notes")  # left as it was
    code, _, err = run(capsys, "--db", tmp_path / "missing-folder" / "x.db", "stats")
    assert code == 1 and "folder exists" in err


@pytest.mark.slow
def test_chat_learns_from_a_line_and_ask_uses_it_in_that_namespace_only(capsys, db, monkeypatch, lm):
    import io

    lines = "From now on, remember that Alice's manager is Bob.\n\nWho is Alice's manager?\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    code, out, err = run(capsys, "--db", db, "-n", "u1", "chat", "--json")
    assert code == 0, err
    turns = [json.loads(line) for line in out.splitlines()]
    assert [t["route"] for t in turns] == ["remember", "serac"]
    assert turns[1]["edits_used"] == [turns[0]["learned"]] and "Bob" in turns[1]["reply"]

    asked = run_json(capsys, "--db", db, "-n", "u1", "ask", "Who is Alice's manager?")
    assert asked["edits_used"] == [turns[0]["learned"]] and [s["step"] for s in asked["trace"]][:2] == ["retrieve", "scope"]
    assert run_json(capsys, "--db", db, "-n", "u2", "ask", "Who is Alice's manager?")["route"] == "base"
