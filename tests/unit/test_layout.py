"""The shape of the code, held by tests: imports flow one way, and modules stay small.

Why: the two classes that grew by accretion (issue 20) grew one import and one field at a time;
each rule here fails the first time it is broken, not in a review months later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.procs import REPO

PACKAGES = ("session", "coordinators")
#: The largest a module may grow (generated stubs aside).
MAX_LINES = 450
#: The most instance attributes a class holding a lifecycle may have (issue 20: they had 27 and 35).
MAX_ATTRIBUTES = 14
#: Those classes: each state of theirs is a named value or an object, not a combination of fields.
LIFECYCLE_CLASSES = {
    "session/campaign.py": "Campaign",
    "coordinators/server/process.py": "CoordinatorProcess",
    "coordinators/server/active.py": "ActiveTerm",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "proto" in path.relative_to(REPO).parts:
                continue
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every module of ours ``path`` imports, at run time or for type checking only."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) - {name} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_not_even_a_type_only_one() -> None:
    graph = _graph()
    # The package facades import their modules; a module importing its facade would close a circle.
    assert _cycles(graph) == []


def test_the_operator_commands_are_imported_by_nothing_below_them() -> None:
    graph = _graph()
    upward = sorted(f"{name} -> {dep}" for name, deps in graph.items() if not name.startswith("coordinators.ops")
                    for dep in deps if dep.startswith("coordinators.ops"))
    assert upward == []


def test_the_session_library_imports_nothing_of_the_coordinators() -> None:
    graph = _graph()
    assert sorted(f"{n} -> {d}" for n, deps in graph.items() if n.startswith("session")
                  for d in deps if d.startswith("coordinators")) == []


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in _modules().values()))
def test_modules_stay_small(path: str) -> None:
    lines = len((REPO / path).read_text().splitlines())
    assert lines <= MAX_LINES, f"{path} is {lines} lines, over {MAX_LINES}: split it by concept"


def _instance_attributes(path: Path, name: str) -> set[str]:
    """Every ``self.<attr> = ...`` (or annotated, or augmented) target in the methods of class ``name``,
    but its properties (a property's setter stores in an attribute of its own, counted there)."""
    (cls,) = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef) and n.name == name]
    properties = {f.name for f in cls.body if isinstance(f, ast.FunctionDef)
                  and any(isinstance(d, ast.Name) and d.id == "property" for d in f.decorator_list)}
    found = set()
    for node in ast.walk(cls):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                    found.add(sub.attr)
    return found - properties


@pytest.mark.parametrize(("path", "name"), sorted(LIFECYCLE_CLASSES.items()))
def test_lifecycle_classes_hold_few_fields(path: str, name: str) -> None:
    attributes = _instance_attributes(REPO / path, name)
    assert len(attributes) <= MAX_ATTRIBUTES, f"{name} has {len(attributes)} attributes: {sorted(attributes)}"


def test_the_attribute_count_sees_every_kind_of_assignment(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("class C:\n    def f(self):\n        self.a = 1\n        self.b: int = 2\n"
                      "        self.c += 1\n        self.d, self.e = 1, 2\n        other.f = 3\n        self.p = 4\n"
                      "    @property\n    def p(self):\n        return 0\n")
    assert _instance_attributes(source, "C") == {"a", "b", "c", "d", "e"}


def test_one_reading_order_names_every_module_of_the_session_library() -> None:
    """session/__init__'s docstring and README's Layout each name every module of session/."""
    modules = sorted(p.stem for p in (REPO / "session").glob("*.py") if p.stem != "__init__")
    facade = ast.get_docstring(ast.parse((REPO / "session" / "__init__.py").read_text())) or ""
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    assert [m for m in modules if f":mod:`session.{m}`" not in facade] == []
    assert [m for m in modules if f"`{m}.py`" not in layout.split("- `coordinators/`")[0]] == []
