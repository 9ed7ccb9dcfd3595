"""The package's shape, checked: module and class sizes, no import cycle, the glue at the edge.

Read with ``ast`` alone (nothing is imported), so a violation is reported for the file that has it.
How imports count:

* Every ``import``/``from ... import`` of a ``pytest_zoo`` module is an edge, at module level and
  inside functions alike: a lazy import still ties two modules together (the old
  ``plugin`` <-> ``snapshot_plugin`` cycle was two lazy imports). ``from pkg import name`` is an
  edge to ``pkg.name`` when that is a module, else to ``pkg``.
* Imports under ``if TYPE_CHECKING:`` are not edges: they never run and exist for annotations.
* Importing ``pkg.mod`` runs ``pkg/__init__`` first, but that is not counted as an edge: a
  package whose ``__init__`` re-exports its children (``snapshot``) would otherwise be a cycle by
  construction.
* The package root ``pytest_zoo/__init__.py`` is the lazy public facade: its loaders import one
  module of every subpackage, the glue's ``require_values`` included, so its own edges are left
  out of the cycle and glue rules (modules may still import ``__version__`` from it).
* The top-level compatibility modules (``pytest_zoo/checks.py`` & co., each re-exporting a moved
  module under its old path) must not be imported from inside the package: the kit uses the
  canonical paths.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_zoo"
ROOT = "pytest_zoo"
GLUE = "pytest_zoo.plugin"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250

#: The old module paths that only re-export a moved module (the README and users import them).
SHIMS = {
    "pytest_zoo.building",
    "pytest_zoo.checks",
    "pytest_zoo.deployment",
    "pytest_zoo.netguard",
    "pytest_zoo.strategies",
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement outside ``if TYPE_CHECKING:`` blocks, at any depth."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def _edges(name: str, path: Path) -> set[str]:
    """The ``pytest_zoo`` modules that module ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names if alias.name.split(".")[0] == ROOT)
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        if source.split(".")[0] != ROOT:
            continue
        for alias in node.names:
            child = f"{source}.{alias.name}"
            targets.add(child if child in MODULES else source)
    targets.discard(name)
    return targets


GRAPH = {name: _edges(name, path) for name, path in MODULES.items() if name != ROOT}


def test_the_graph_sees_the_imports() -> None:
    """A sanity check of the resolver itself, on edges known to exist."""
    assert "pytest_zoo.models.heads" in GRAPH["pytest_zoo.models.inference"]
    assert "pytest_zoo.plugin.snapshots" in GRAPH["pytest_zoo.plugin"]  # a function-level import
    assert "pytest_zoo.conformance.checks" in GRAPH["pytest_zoo.plugin.suite"]


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {_rel(path): len(path.read_text(encoding="utf-8").splitlines()) for path in MODULES.values()}
    oversize = {path: lines for path, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert oversize == {}, f"modules over {MAX_MODULE_LINES} lines: {oversize}"


def test_no_class_is_over_the_size_limit() -> None:
    large = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and (node.end_lineno or 0) - node.lineno + 1 > MAX_CLASS_LINES:
                large.add((_rel(path), node.name))
    assert large == set(), f"classes over {MAX_CLASS_LINES} lines: {large}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycle() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_glue_imports_the_glue() -> None:
    outside = {
        name: sorted(t for t in targets if t == GLUE or t.startswith(f"{GLUE}."))
        for name, targets in GRAPH.items()
        if not (name == GLUE or name.startswith(f"{GLUE}."))
    }
    assert {name: targets for name, targets in outside.items() if targets} == {}


def test_the_kit_imports_canonical_paths_not_the_old_ones() -> None:
    users = {name: sorted(targets & SHIMS) for name, targets in GRAPH.items() if targets & SHIMS}
    assert users == {}
    assert all(name in MODULES for name in SHIMS)


_MODULE_NAME = re.compile(rf"{ROOT}(\.[A-Za-z_]\w*)+")


def _names_a_module(node: ast.AST) -> bool:
    """A module's dotted name as a string: ``"pytest_zoo.cache"``, or ``f"{__package__}.heads"``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _MODULE_NAME.fullmatch(node.value) is not None
    if isinstance(node, ast.JoinedStr) and len(node.values) == 2:
        head, tail = node.values
        return (
            isinstance(head, ast.FormattedValue)
            and isinstance(head.value, ast.Name)
            and head.value.id in ("__name__", "__package__")
            and isinstance(tail, ast.Constant)
            and _MODULE_NAME.fullmatch(f"{ROOT}{tail.value}") is not None
        )
    return False


def test_no_module_is_referenced_by_a_name_string() -> None:
    """A string that is a module's dotted name breaks silently when the module moves; import it."""
    found = [
        f"{_rel(path)}:{node.lineno}: {ast.unparse(node)}"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if _names_a_module(node)
    ]
    assert found == []


def test_the_name_string_finder_finds_both_spellings() -> None:
    tree = ast.parse(
        'a = "pytest_zoo.cache"\nb = f"{__package__}.heads"\nc = "pytest_zoo.register_adapter(x)"'
    )
    assert [_names_a_module(node.value) for node in tree.body if isinstance(node, ast.Assign)] == [
        True,
        True,
        False,
    ]
