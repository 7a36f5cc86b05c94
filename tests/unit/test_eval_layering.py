"""The layering of evaluation and tracking, read from the source (every ``import`` / ``from`` statement of every
module under ``trainer/``, those inside functions included; nothing is imported).

``trainer.evaluate``, ``trainer.track`` and ``trainer.view`` are entry points: they use the benchmarks of ``trainer/eval/`` and the
trackers of ``trainer/tracking/``, never the other way round; the trackers do not know the benchmarks; and no
import cycle runs through any of them.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[2] / "trainer"

#: the entry points nothing below them may import
ENTRY_POINTS = ("trainer.evaluate", "trainer.track", "trainer.view")


def _module_name(path: Path) -> str:
    parts = path.relative_to(TRAINER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    """``{dotted name: file}`` of every module under ``trainer/`` (a package is its ``__init__.py``)."""
    return {_module_name(p): p for p in sorted(TRAINER.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(node: ast.AST):
    """Every import statement under ``node``, at any depth, except under ``if TYPE_CHECKING:`` (never run)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child):
            yield from (s for branch in child.orelse for s in _statements(ast.Module(body=[branch], type_ignores=[])))
        else:
            yield from _statements(child)


def _resolve(name: str) -> str | None:
    """The ``trainer`` module an imported dotted name lands in: itself, or its nearest enclosing module."""
    modules = _modules()
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def imports_of(module: str) -> frozenset[str]:
    """The ``trainer`` modules ``module`` imports (``from trainer.eval import predict``: ``trainer.eval.predict``;
    ``from trainer.lit_base import load_checkpoint``: ``trainer.lit_base``; ``import trainer.eval``: its
    ``__init__``)."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in _statements(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from its package, up level - 1
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # each name may be a submodule (from trainer.eval import predict) or an attribute of ``base``
            targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
        for target in targets:
            if target == "trainer" or target.startswith("trainer."):
                resolved = _resolve(target)
                if resolved is not None and resolved != module:
                    out.add(resolved)
    return frozenset(out)


def _graph() -> dict[str, frozenset[str]]:
    return {m: imports_of(m) for m in _modules()}


def _within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def find_cycles(graph: dict[str, frozenset[str]]) -> list[tuple[str, ...]]:
    """The import cycles a depth-first search meets (one per back edge), each rotated to start at its smallest
    module, without repeats."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []
    found: set[tuple[str, ...]] = set()

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :]
                i = cycle.index(min(cycle))
                found.add(tuple(cycle[i:] + cycle[:i]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return sorted(found)


def test_the_parser_sees_imports_inside_functions():
    # trainer.evaluate imports the benchmarks lazily, inside evaluate()
    assert {"trainer.eval.nusc_detection", "trainer.eval.av2_detection", "trainer.tracking"} <= imports_of(
        "trainer.evaluate"
    )
    assert "trainer.eval.coverage" in imports_of("trainer.eval.nusc_tracking")


def test_benchmarks_and_trackers_do_not_import_the_entry_points():
    bad = {
        m: sorted(i for i in imports if _within(i, *ENTRY_POINTS))
        for m, imports in _graph().items()
        if _within(m, "trainer.eval", "trainer.tracking")
    }
    bad = {m: i for m, i in bad.items() if i}
    assert not bad, f"trainer/eval/ and trainer/tracking/ must not import {ENTRY_POINTS}: {bad}"


def test_trackers_do_not_import_the_benchmarks():
    bad = {
        m: sorted(i for i in imports if _within(i, "trainer.eval"))
        for m, imports in _graph().items()
        if _within(m, "trainer.tracking")
    }
    bad = {m: i for m, i in bad.items() if i}
    assert not bad, f"trainer/tracking/ must not import trainer.eval: {bad}"


#: the modules whose cycles this test refuses (cycles elsewhere in trainer/ are another matter)
LAYERED = ("trainer.eval", "trainer.evaluate", "trainer.tracking", "trainer.track", "trainer.view")


def test_no_import_cycle_through_evaluation_or_tracking():
    cycles = [c for c in find_cycles(_graph()) if any(_within(m, *LAYERED) for m in c)]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join((*c, c[0])) for c in cycles)


def test_find_cycles_finds_them():
    graph = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset({"a"})}
    assert find_cycles(graph) == [("a", "b", "c")]
    assert find_cycles({"a": frozenset({"b"}), "b": frozenset()}) == []
