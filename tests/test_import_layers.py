"""``lavislike`` has no import circles, and ``lavislike/models`` reads top-down.

The import graph is read from the source with ``ast`` (nothing is imported). A cycle in
the module-level imports of ``lavislike/`` fails; inside ``lavislike/models`` imports
in function bodies count too (a lazy import only hides a circle), and the parts (image
encoders, LLM adapters, Q-Former, freezing, losses, meta builds) import no composition
(``base``, ``blip2``, ``blip2_llm``) and nothing of loading.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("lavislike.models.image_encoders", "lavislike.models.llms", "lavislike.models.qformer",
         "lavislike.models.decoding", "lavislike.models.freezing", "lavislike.models.losses",
         "lavislike.models.meta_init")
ABOVE_PARTS = ("lavislike.models.base", "lavislike.models.blip2", "lavislike.models.blip2_llm",
               "lavislike.models.loading", "lavislike.models.convert.from_hf", "lavislike.models.convert.cli")


def modules() -> dict[str, Path]:
    out = {}
    for file in (ROOT / "lavislike").rglob("*.py"):
        parts = file.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return out


def _target(known: dict, name: str) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _imports(nodes, name: str, is_package: bool, known: dict) -> set[str]:
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {_target(known, a.name) for a in node.names if a.name.startswith("lavislike")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = package + ("." + node.module if node.module else "")
            if base.startswith("lavislike"):
                # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else _target(known, base)
                          for a in node.names}
    found.discard(None)
    found.discard(name)
    return found


def _module_level(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        yield from (ast.walk(node) if isinstance(node, (ast.If, ast.Try, ast.With)) else (node,))


def graph(lazy_under: str = "") -> dict[str, set[str]]:
    """Module -> the lavislike modules it imports (function bodies too for ``lazy_under``)."""
    known = modules()
    out = {}
    for name, file in known.items():
        tree = ast.parse(file.read_text())
        nodes = ast.walk(tree) if lazy_under and name.startswith(lazy_under) else _module_level(tree)
        out[name] = _imports(nodes, name, file.name == "__init__.py", known)
    return out


def find_cycle(edges: dict[str, set[str]], within: str = "") -> list[str] | None:
    """One import cycle (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if not nxt.startswith(within):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for start in sorted(edges):
        if start.startswith(within) and start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_level_import_cycle_in_lavislike():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_models_has_no_cycle_even_through_lazy_imports():
    cycle = find_cycle(graph(lazy_under="lavislike.models"), within="lavislike.models")
    assert cycle is None, " -> ".join(cycle or [])


def test_model_parts_import_no_composition_and_no_loading():
    edges = graph(lazy_under="lavislike.models")
    wrong = sorted(f"{m} -> {t}" for m, targets in edges.items() if m.startswith(PARTS)
                   for t in targets if t.startswith(ABOVE_PARTS))
    assert not wrong, "; ".join(wrong)


@pytest.mark.parametrize("source,expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
])
def test_the_cycle_finder_finds_cycles(source, expected):
    assert find_cycle(source) == expected


def test_the_graph_sees_lazy_imports():
    # the reader must see what it checks: llms/base imports meta_init at module level and
    # qformer reads BERT weights through a function-level import
    assert "lavislike.models.meta_init" in graph()["lavislike.models.llms.base"]
    lazy = graph(lazy_under="lavislike.models")["lavislike.models.qformer"]
    assert "lavislike.models.image_encoders.weights" in lazy
    assert "lavislike.models.image_encoders.weights" not in graph()["lavislike.models.qformer"]
