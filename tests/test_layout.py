"""The package's layout: no import cycle between modules or between packages, and no module over 400 lines.

The import graph is read statically with ``ast``: every ``import`` and ``from ... import`` of every module, at any
depth (inside functions too, where a cycle hides from the interpreter), relative imports resolved. An edge goes to the
module an import names: ``from p import n`` names ``p.n`` when that is a module of the package, else ``p`` itself
when ``p`` binds ``n``; a name neither binds is a compiled or separately installed submodule (``sgpo._C``,
``sgpo.kernels``) and gives no edge. Importing a submodule also runs its parents' ``__init__``; those implicit edges
are left out, as a package's ``__init__`` importing its own submodules is no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SGPO = Path(__file__).resolve().parents[1] / "python" / "sgpo"
MAX_LINES = 400


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Every module of the package at ``root``: its dotted name -> (file, whether it is a package's ``__init__``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def bound_names(tree: ast.Module) -> set[str]:
    """The names a module binds at its top level (definitions, assignments, imports)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, statically, at any depth."""
    found = modules(root)
    trees = {name: ast.parse(path.read_text(encoding="utf-8")) for name, (path, _) in found.items()}
    bound = {name: bound_names(tree) for name, tree in trees.items()}
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, tree in trees.items():
        package = name if found[name][1] else name.rpartition(".")[0]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name in found]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    if f"{source}.{alias.name}" in found:
                        targets.append(f"{source}.{alias.name}")
                    elif source in found and (alias.name == "*" or alias.name in bound[source]):
                        targets.append(source)
            graph[name].update(t for t in targets if t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (each sorted), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between the top level's subpackages and modules (``sgpo.pipeline``, ``sgpo.tables``, ...)."""

    def unit(name: str) -> str:
        return ".".join(name.split(".")[:2])

    units: dict[str, set[str]] = {unit(name): set() for name in graph}
    for name, targets in graph.items():
        units[unit(name)].update(unit(t) for t in targets if unit(t) != unit(name))
    return units


def test_no_module_of_sgpo_is_in_an_import_cycle() -> None:
    graph = import_graph(SGPO)
    assert {"sgpo.pipeline.runner", "sgpo.evaluation.report", "sgpo.pipeline.stages.update"} <= set(graph)
    # a function-level import is an edge: the evaluate stage imports the judge registry inside a function
    assert "sgpo.pipeline.judges" in graph["sgpo.pipeline.stages.evaluate"]
    assert cycles(graph) == []


def test_no_cycle_between_the_packages_and_the_evaluation_imports_no_pipeline() -> None:
    units = unit_graph(import_graph(SGPO))
    assert cycles(units) == []
    # the pipeline evaluates with the evaluation package; the evaluation package never reaches the pipeline
    assert "sgpo.evaluation" in units["sgpo.pipeline"]
    reachable, todo = set(), ["sgpo.evaluation"]
    while todo:
        for target in units[todo.pop()] - reachable:
            reachable.add(target)
            todo.append(target)
    assert "sgpo.pipeline" not in reachable, sorted(reachable)


def test_the_checker_finds_a_cycle_between_modules_and_one_between_packages(tmp_path: Path) -> None:
    files = {
        "__init__.py": "",
        # a cycle of modules, one edge inside a function, one relative
        "a.py": "def f():\n    from pkg import b\n",
        "b.py": "from . import a\n",
        # compiled submodules give no edge, a name of a package's __init__ gives an edge to it
        "c.py": "from pkg import _C\nfrom pkg.pipeline import RUN\n",
        # a cycle of packages without a cycle of modules: run -> judge -> config
        "pipeline/__init__.py": "RUN = 1\n",
        "pipeline/run.py": "import pkg.evaluation.judge\n",
        "pipeline/config.py": "X = 1\n",
        "evaluation/__init__.py": "",
        "evaluation/judge.py": "def g():\n    from ..pipeline import config\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    assert graph["pkg.c"] == {"pkg.pipeline"}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
    assert cycles(unit_graph(graph)) == [["pkg.a", "pkg.b"], ["pkg.evaluation", "pkg.pipeline"]]
    (tmp_path / "pkg" / "b.py").write_text("")
    (tmp_path / "pkg" / "evaluation" / "judge.py").write_text("")
    assert cycles(import_graph(tmp_path / "pkg")) == cycles(unit_graph(import_graph(tmp_path / "pkg"))) == []


def test_every_module_is_at_most_400_lines() -> None:
    sizes = {
        str(path.relative_to(SGPO)): len(path.read_text(encoding="utf-8").splitlines()) for path in SGPO.rglob("*.py")
    }
    assert len(sizes) > 40
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"
