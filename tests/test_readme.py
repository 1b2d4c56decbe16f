"""The README's Python code runs as written (so the API tour stays true)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_api_tour_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks()
    assert blocks, "README has no python code block"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "['add', 'supersede', 'restore']" in out
    assert 'serac ["Alice\'s manager is Bob."]' in out                      # the chat session used the taught fact
    assert "memedit could not do that: no edit with id 'no-such-id'" in out   # a tool error, as text
    assert "1 consolidated, 0 kept on the retrieval path, 1 skipped" in out   # the ROME block wrote its edit
    assert "\nRome" in out or " Rome" in out
    assert (tmp_path / "memedit.db").exists() and (tmp_path / "other.db").exists()
