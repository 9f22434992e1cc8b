"""Dead code: every module-level function, class and constant of the library is used by the library itself.

"Used" means read somewhere in training/, export/ or service/ other than its own definition: by name in its
module, imported by name from another module, read as an attribute of its module, or listed as public API
(``export/__init__``'s lazy names, ``__all__``). Tests and benchmarks do not count: code only they call is a
second path to maintain (issue 20, defect 7). Decorated functions (routes, fixtures) are used by their decorator.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contracts", "training", "export", "service")


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _definitions(tree: ast.Module) -> dict[str, ast.AST]:
    found: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and not node.decorator_list:
            found[node.name] = node
        elif isinstance(node, ast.Assign):
            found.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
    return {k: v for k, v in found.items() if not k.startswith("__")}


def _reads(tree: ast.Module, module: str, skip: ast.AST | None) -> set[tuple[str, str]]:
    """(module, name) pairs that ``tree`` reads; names inside ``skip`` (a definition itself) do not count."""
    inside = {id(n) for n in ast.walk(skip)} if skip is not None else set()
    reads: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if id(node) in inside:
            continue
        if isinstance(node, ast.Name):
            reads.add((module, node.id))
        elif isinstance(node, ast.ImportFrom) and node.module:
            reads.update((node.module, a.name) for a in node.names)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            reads.add((node.value.id, node.attr))  # module alias . name (matched on the alias's last part)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            reads.add(("", node.value))  # __all__ entries and lazy "export.x" tables name what they export
    return reads


def unused(files: dict[str, ast.Module]) -> list[str]:
    everything = {m: _reads(t, m, None) for m, t in files.items()}
    dead = []
    for module, tree in files.items():
        for name, node in _definitions(tree).items():
            own = _reads(tree, module, node)
            others = set().union(*(r for m, r in everything.items() if m != module))
            alias = module.rsplit(".", 1)[-1]
            if not ({(module, name), (alias, name), ("", name)} & (own | others)):
                dead.append(f"{module}.{name}")
    return dead


def test_no_library_code_is_used_only_by_tests_or_benchmarks() -> None:
    files = {_module(p): ast.parse(p.read_text()) for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    assert unused(files) == []


def test_the_check_finds_a_function_nobody_calls() -> None:
    a = ast.parse("def used():\n    return 1\n\ndef dead():\n    return used()\n\nX = 1\n")
    b = ast.parse("from pkg.a import X\n")
    assert unused({"pkg.a": a, "pkg.b": b}) == ["pkg.a.dead"]
