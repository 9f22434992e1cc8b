"""House style: no function over 50 lines anywhere in the project's code (decorators excluded, docstring included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contracts", "training", "export", "service", "benchmarks", "scripts", "tests")
LIMIT = 50


def long_functions(source: str, filename: str) -> list[str]:
    """``file:line name (N lines)`` for every function or method in ``source`` longer than LIMIT lines."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > LIMIT:
                found.append(f"{filename}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_over_50_lines() -> None:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 50  # the walk really found the project
    found = [f for p in files for f in long_functions(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == [], "split these functions:\n" + "\n".join(found)


def test_the_check_sees_long_functions_and_methods() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT - 1))
    fits = f"def f():\n{body}\n"
    too_long = f"class C:\n    async def g(self):\n{body}\n        return 0\n".replace("\n    x", "\n        x")
    assert long_functions(fits, "a.py") == []
    assert long_functions(too_long, "b.py") == ["b.py:2 g (51 lines)"]
