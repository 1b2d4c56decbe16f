"""The ground floor does not reach up: the store's core modules import nothing from the
routers, the weight editors, the evaluator or the adapters (the facades may)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ("edit.py", "storage.py", "store.py", "pgstore.py", "pgindex.py", "index.py", "memory.py", "embeddings.py")
UPPER = ("retrievers", "param_editors", "eval", "adapters")


def imported(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names, relative ones resolved inside memedit."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "memedit." * (node.level > 0) + (node.module or "")
            names.add(base.rstrip("."))
            names |= {f"{base}.{alias.name}".replace("..", ".") for alias in node.names}
    return names


def test_the_core_modules_import_nothing_from_the_upper_folders():
    for name in CORE:
        bad = {m for m in imported(ROOT / "memedit" / name)
               if any(m == f"memedit.{u}" or m.startswith(f"memedit.{u}.") or m.split(".")[0] == u for u in UPPER)}
        assert not bad, f"memedit/{name} imports {sorted(bad)}"


def test_the_check_sees_a_lazy_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from .param_editors.consolidate import consolidate\n")
    assert "memedit.param_editors.consolidate" in imported(sample)
