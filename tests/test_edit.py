"""Edit: every validation error (type, field, a hint of the fix), derived defaults, immutability."""

import dataclasses
from datetime import datetime

import pytest

from memedit import Edit, EditError, MemeditError
from memedit.edit import KINDS, MAX_ALIASES, MAX_FIELD_CHARS, MAX_STATEMENT_CHARS

TRIPLE = {"subject": "France", "prompt": "The capital of {} is", "target": "Lyon"}


def triple(**changes):
    return {**TRIPLE, **changes}


# (fields, the field the error must name, a keyword of the fix the message must give)
BAD_EDITS = [
    pytest.param(triple(subject=""), "subject", "give some text", id="empty-subject"),
    pytest.param(triple(subject="   \t "), "subject", "give some text", id="blank-subject"),
    pytest.param(triple(prompt="The capital of France is"), "prompt", "exactly once", id="prompt-without-braces"),
    pytest.param(triple(prompt="{} borders {}"), "prompt", "exactly once", id="prompt-with-two-braces"),
    pytest.param(triple(kind="erase"), "target", "leave target out", id="target-on-erase"),
    pytest.param(triple(kind="insert", old_target="Paris"), "old_target", "kind='modify'", id="insert-with-old-target"),
    pytest.param(triple(subject="x" * (MAX_FIELD_CHARS + 1)), "subject", "shorten", id="subject-over-field-limit"),
    pytest.param(triple(target="y" * (MAX_FIELD_CHARS + 1)), "target", "shorten", id="target-over-field-limit"),
    pytest.param({"statement": "z" * (MAX_STATEMENT_CHARS + 1)}, "statement", "shorten", id="statement-over-limit"),
    pytest.param(triple(subject="s" * MAX_FIELD_CHARS, prompt="p" * (MAX_FIELD_CHARS - 3) + " {}", target="t" * MAX_FIELD_CHARS),
                 "statement", "shorten", id="derived-statement-over-limit"),
    pytest.param(triple(subject=42), "subject", "pass a string", id="int-subject"),
    pytest.param(triple(target=["Lyon"]), "target", "pass a string", id="list-target"),
    pytest.param({"statement": 3.5}, "statement", "pass a string", id="float-statement"),
    pytest.param(triple(prompt=None), "prompt", "cloze template", id="none-prompt"),
    pytest.param(triple(target=None), "target", "give the new answer", id="none-target-on-insert"),
    pytest.param(triple(target=None, old_target="Paris"), "target", "give the new answer", id="none-target-on-modify"),
    pytest.param(triple(aliases="Lugdunum"), "aliases", "wrap a single alias in a list", id="aliases-a-string"),
    pytest.param(triple(aliases={"Lugdunum": 1}), "aliases", "list of strings", id="aliases-a-dict"),
    pytest.param(triple(aliases=["Lugdunum", 7]), "aliases[1]", "pass a string", id="alias-not-text"),
    pytest.param(triple(aliases=[None]), "aliases[0]", "required", id="alias-none"),
    pytest.param(triple(aliases=[f"a{i}" for i in range(MAX_ALIASES + 1)]), "aliases", "keep the most common", id="too-many-aliases"),
    pytest.param(triple(kind="delete"), "kind", "insert, modify, erase", id="unknown-kind"),
    pytest.param(triple(kind=1), "kind", "insert, modify, erase", id="int-kind"),
    pytest.param(triple(created_at="yesterday"), "created_at", "ISO 8601", id="bad-created-at"),
    pytest.param(triple(created_at=1767225600), "created_at", "ISO 8601", id="int-created-at"),
    pytest.param({}, "statement", "statement=", id="nothing-at-all"),
    pytest.param({"source": "chat"}, "statement", "statement=", id="free-text-without-statement"),
    pytest.param({"prompt": "The capital of {} is", "target": "Lyon"}, "subject", "needs subject", id="prompt-without-subject"),
    pytest.param({"statement": "Lyon is the capital.", "target": "Lyon"}, "subject", "needs subject", id="target-without-subject"),
    pytest.param(triple(source="chat\x00log"), "source", "remove it", id="nul-in-source"),
]


@pytest.mark.parametrize("fields, field, fix", BAD_EDITS)
def test_invalid_edit_raises_edit_error_naming_field_and_fix(fields, field, fix):
    with pytest.raises(EditError) as caught:
        Edit(**fields)
    err = caught.value
    assert isinstance(err, MemeditError) and isinstance(err, ValueError)
    assert err.field == field
    assert field in str(err)
    assert fix in str(err)


@pytest.mark.parametrize("fields, field, fix", BAD_EDITS)
def test_from_dict_raises_the_same_errors(fields, field, fix):
    with pytest.raises(EditError) as caught:
        Edit.from_dict(dict(fields))
    assert caught.value.field == field and fix in str(caught.value)


def test_limits_are_inclusive_and_statement_limit_is_larger_than_field_limit():
    at_field_limit = Edit(**triple(subject="x" * MAX_FIELD_CHARS))
    assert len(at_field_limit.subject) == MAX_FIELD_CHARS
    # a statement longer than the field limit but within its own limit is fine
    long_statement = "w" * MAX_STATEMENT_CHARS
    assert MAX_STATEMENT_CHARS > MAX_FIELD_CHARS
    assert Edit(statement=long_statement).statement == long_statement
    # surrounding whitespace does not count towards the limit
    assert Edit(statement="  " + long_statement + "\n").statement == long_statement


def test_unknown_field_in_from_dict_is_named_with_the_known_fields():
    with pytest.raises(EditError) as caught:
        Edit.from_dict({"subjct": "France", "prompt": "The capital of {} is", "target": "Lyon"})
    err = caught.value
    assert err.field == "subjct"
    message = str(err)
    assert "subjct" in message and "known fields" in message
    for name in ("subject", "prompt", "target", "statement"):
        assert name in message


def test_from_dict_of_a_non_mapping_is_an_edit_error():
    with pytest.raises(EditError) as caught:
        Edit.from_dict(["France", "The capital of {} is", "Lyon"])
    assert caught.value.field == "(record)" and "JSON object" in str(caught.value)


def test_derived_statement_relation_and_kind_defaults():
    subject, prompt, target = "  Lionel Messi ", "{} plays for", "Juventus"
    edit = Edit(subject=subject, prompt=prompt, target=target)
    assert edit.subject == subject.strip()
    assert edit.kind == "insert"
    assert edit.relation == prompt
    assert edit.statement == f"{prompt.replace('{}', subject.strip())} {target}."
    assert edit.is_triple

    modify = Edit(subject="France", prompt="The capital of {} is", target="Lyon.", old_target="Paris")
    assert modify.kind == "modify"
    # no second full stop when the target ends a sentence already
    assert modify.statement == "The capital of France is Lyon."

    explicit = Edit(subject="France", prompt="The capital of {} is", target="Lyon", relation="capital", kind="modify")
    assert explicit.relation == "capital" and explicit.kind == "modify"

    given = Edit(subject="France", prompt="The capital of {} is", target="Lyon", statement="France moved its capital to Lyon.")
    assert given.statement == "France moved its capital to Lyon."


def test_erase_has_no_target_and_a_statement_that_marks_the_erasure():
    erase = Edit(subject="Pluto", prompt="{} is classified as", kind="erase", old_target="a planet")
    filled = "Pluto is classified as"
    assert erase.target is None and erase.old_target == "a planet"
    assert erase.statement.startswith(filled) and erase.statement != filled
    assert "erase" in erase.statement
    # an erase without old_target is valid too
    assert Edit(subject="Pluto", prompt="{} is classified as", kind="erase").kind == "erase"


def test_free_text_edit_defaults():
    edit = Edit(statement="  The coffee machine is on the third floor. ")
    assert edit.statement == "The coffee machine is on the third floor."
    assert edit.kind == "insert" and not edit.is_triple
    assert edit.subject is None and edit.relation is None and edit.key is None
    assert edit.aliases == () and edit.id is None and edit.namespace is None and edit.created_at is None


def test_aliases_are_stripped_deduplicated_in_order_and_stored_as_a_tuple():
    edit = Edit(**triple(aliases=[" Lugdunum", "Lyons", "Lugdunum ", "Lyons"]))
    assert edit.aliases == ("Lugdunum", "Lyons")
    assert Edit(**triple(aliases=None)).aliases == ()


def test_supersede_key_ignores_case_and_whitespace_but_not_the_relation():
    a = Edit(subject="New  York", prompt="The mayor of {} is", target="X")
    b = Edit(subject=" new york ", prompt="the MAYOR of  {}   is", target="Y")
    c = Edit(subject="New York", prompt="The governor of {} is", target="Z")
    d = Edit(subject="New York", prompt="{} has as its mayor", relation="the mayor of {} is", target="W")
    assert a.key == b.key == d.key
    assert a.key != c.key


def test_valid_timestamps_are_accepted():
    stamp = datetime(2026, 1, 31, 12, 0).isoformat()
    assert Edit(statement="s", created_at=stamp).created_at == stamp
    assert Edit(statement="s", created_at="2026-01-31T12:00:00+00:00").created_at.endswith("+00:00")


@pytest.mark.parametrize("name, value", [("subject", "Spain"), ("statement", "x"), ("aliases", ("a",)), ("kind", "erase")])
def test_edit_is_immutable(name, value):
    edit = Edit(**triple(aliases=["Lugdunum"]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(edit, name, value)
    assert edit == Edit(**triple(aliases=["Lugdunum"]))
    with pytest.raises(AttributeError):
        edit.aliases.append("Lyons")  # a tuple, not a shared list


def test_replace_returns_a_new_validated_edit():
    edit = Edit(**triple())
    other = edit.replace(id="abc123", namespace="team")
    assert (other.id, other.namespace) == ("abc123", "team")
    assert edit.id is None and edit.namespace is None
    with pytest.raises(EditError) as caught:
        edit.replace(prompt="no slot here")
    assert caught.value.field == "prompt"


def test_to_dict_from_dict_round_trip():
    edit = Edit(subject="France", prompt="The capital of {} is", target="Lyon", old_target="Paris",
                aliases=["Lugdunum"], source="chat", id="e1", namespace="ns", created_at="2026-01-31T12:00:00+00:00")
    data = edit.to_dict()
    assert data["aliases"] == ["Lugdunum"]
    assert set(data) == {f.name for f in dataclasses.fields(Edit)}
    assert Edit.from_dict(data) == edit
    for kind in KINDS:  # every kind round-trips too
        fields = triple(kind=kind, target=None) if kind == "erase" else triple(kind=kind)
        e = Edit(**fields)
        assert Edit.from_dict(e.to_dict()) == e


def test_replace_derives_the_statement_and_relation_again_but_keeps_given_ones():
    edit = Edit(subject="France", prompt="The capital of {} is", target="Lyon")
    moved = edit.replace(target="Nice")
    assert moved.statement == moved.prompt.replace("{}", "France") + " Nice."
    reworded = edit.replace(prompt="{} has its capital in")
    assert reworded.relation == "{} has its capital in" and reworded.statement.startswith("France has its capital in")
    own = Edit(subject="France", prompt="The capital of {} is", target="Lyon", statement="Lyon is France's capital.",
               relation="capital")
    changed = own.replace(target="Nice", prompt="{}'s capital is")
    assert (changed.statement, changed.relation) == ("Lyon is France's capital.", "capital")
