"""The package's import graph has layers: no module imports, at load time, a module that imports it
back (directly or around a longer loop), and no module reaches into another one's private names.

Read with ``ast`` from the source of ``v4lab/`` (package ``v4lab``, with ``v4lab.plots``) and
``kernels/`` (package ``v4lab.kernels``), so nothing is imported.  Only imports that run when a
module loads count for cycles: those at module level, in class bodies and in module-level
``if`` / ``try`` blocks.  Imports inside functions are allowed to break a cycle, and
``if TYPE_CHECKING:`` blocks never run.  The private-name rule holds for every import, wherever
it stands: ``from .mod import _name`` names something ``mod`` keeps to itself.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"v4lab": ROOT / "v4lab", "v4lab.kernels": ROOT / "kernels"}



def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (``__init__`` included)."""
    files = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if "__pycache__" in rel.parts:
                continue
            files[".".join([package, *parts])] = path
    return files


MODULES = _module_files()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module):
    """``(node, at_load)`` for every import statement; ``at_load`` is False inside functions,
    lambdas and ``if TYPE_CHECKING:`` blocks."""
    found = []

    def visit(node: ast.AST, at_load: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, at_load))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), at_load)
            else:
                visit(child, at_load)

    visit(tree, True)
    return found


def _base(module: str, node: ast.ImportFrom) -> str | None:
    """The absolute name of the module a ``from ... import`` reads from."""
    if node.level == 0:
        return node.module
    is_package = MODULES[module].name == "__init__.py"
    parts = module.split(".")
    anchor = parts if is_package else parts[:-1]
    if node.level > 1:
        anchor = anchor[:len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _edges(module: str, tree: ast.Module):
    """``(target module, imported name or None, line, at_load)`` for every import of a module of
    the packages."""
    out = []
    for node, at_load in _imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    out.append((alias.name, None, node.lineno, at_load))
            continue
        base = _base(module, node)
        for alias in node.names:
            if f"{base}.{alias.name}" in MODULES:       # `from . import x`: the submodule x
                out.append((f"{base}.{alias.name}", None, node.lineno, at_load))
            elif base in MODULES:
                out.append((base, alias.name, node.lineno, at_load))
    return out


def _graph():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    private = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target, name, line, at_load in _edges(module, tree):
            if at_load and target != module:
                graph[module].add(target)
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                where = f"{path.relative_to(ROOT)}:{line}"
                private.append((module, f"{where}: from {target} import {name}"))
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one loop."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_graph_sees_the_packages_and_their_imports():
    # the scan reads what it should: a few edges that exist today, and none that do not
    graph, _ = _graph()
    assert {"v4lab", "v4lab.plots", "v4lab.plots.attention", "v4lab.kernels", "v4lab.chat",
            "v4lab.kernels.reference"} <= set(graph)
    assert "v4lab.norm" in graph["v4lab.rope"]
    assert "v4lab.plots.attention" in graph["v4lab.plots"]          # `from . import attention`
    assert "v4lab.kernels._common" in graph["v4lab.kernels.compressor"]
    assert "v4lab.compressor" not in graph["v4lab.kernels.reference"]   # imported in a function
    # the layers of the chat and data code and of the figures
    assert {"v4lab.chat_tokens", "v4lab.dsml"} <= graph["v4lab.chat"]
    assert "v4lab.chat_tokens" in graph["v4lab.tokenizer"] and "v4lab.chat" not in graph["v4lab.tokenizer"]
    assert {"v4lab.corpus", "v4lab.needle_tasks", "v4lab.tokenizer"} <= graph["v4lab.data"]
    assert "v4lab.plots.model" in graph["v4lab.plots.attention"]


def test_cycle_finder_finds_a_loop_and_no_false_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycle_at_load_time():
    graph, _ = _graph()
    cycles = _cycles(graph)
    detail = "; ".join(" <-> ".join(c) for c in cycles)
    assert not cycles, f"modules that import each other when they load: {detail}"


def test_no_private_names_imported_across_modules():
    _, private = _graph()
    wrong = [what for module, what in private]
    assert not wrong, "private names imported from another module: " + "; ".join(wrong)


@pytest.mark.parametrize("source, expected", [
    ("from .quant import _scale\n", ["from v4lab.quant import _scale"]),
    ("def f():\n    from os.path import _get_sep\n", []),      # outside the packages: ignored
    ("def f():\n    from .norm import _x, f32\n", ["from v4lab.norm import _x"]),
    ("from . import norm\nfrom .norm import f32, __doc__\n", []),
])
def test_private_name_rule_reads_relative_imports(source, expected):
    tree = ast.parse(source)
    found = [f"from {t} import {n}" for t, n, _, _ in _edges("v4lab.rope", tree)
             if n and n.startswith("_") and not n.startswith("__")]
    assert found == expected
