"""The layout of ARCHITECTURE.md, checked on the import graph of fxprune/, passes/ and models/.

(a) the compiler core (``fxprune/*.py`` other than the front doors, ``fxprune/rules``,
    ``fxprune/training``) imports no method: not ``fxprune.passes`` nor any module under it;
    the front doors may import the registry ``fxprune.passes`` only, never a method's internals;
(b) no import cycle, among module-level imports nor through imports inside functions;
(c) one ``evaluate``, ``finetune``, ``train_loop`` and ``atomic_write`` in the shipped code.
Every import counts, at module level and inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> the package name it is installed as (pyproject's package-dir)
PACKAGES = {"fxprune": ROOT / "fxprune", "fxprune.passes": ROOT / "passes", "fxprune.models": ROOT / "models"}
FRONT_DOORS = {"fxprune", "fxprune.api", "fxprune.prepare", "fxprune.io", "fxprune.demo"}
ONE_DEFINITION = ("evaluate", "finetune", "train_loop", "atomic_write")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every shipped ``.py`` file (a package is its ``__init__``)."""
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            if "__pycache__" in path.parts or (package == "fxprune" and root / "passes" in path.parents):
                continue
            parts = path.relative_to(root).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


def resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` in ``module`` (file ``path``) names."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, path: Path, known: set[str], module_level: bool) -> set[str]:
    """The fxprune modules ``module`` imports (``from x import y`` counts ``x.y`` when it is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    nodes = tree.body if module_level else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, path, node)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        out |= {name for name in names if name in known}
    return out - {module}


def graph(module_level: bool) -> nx.DiGraph:
    found = modules()
    g = nx.DiGraph()
    g.add_nodes_from(found)
    for module, path in found.items():
        g.add_edges_from((module, target) for target in imports(module, path, set(found), module_level))
    return g


def is_core(module: str) -> bool:
    return module.startswith("fxprune") and not module.startswith(("fxprune.passes", "fxprune.models",
                                                                     "fxprune.cli")) \
        and module not in FRONT_DOORS


def test_the_graph_sees_the_layout():
    g = graph(module_level=False)
    assert {"fxprune.training.loop", "fxprune.passes.bep.bep", "fxprune.passes.submodular.greedy",
            "fxprune.rules.conv", "fxprune.models.lenet5"} <= set(g)
    assert g.has_edge("fxprune.passes.submodular.submodular", "fxprune.passes.submodular.greedy")
    assert g.has_edge("fxprune.api", "fxprune.passes")  # a function-level import is seen


def test_core_imports_no_method():
    g = graph(module_level=False)
    bad = sorted((a, b) for a, b in g.edges if is_core(a) and b.startswith("fxprune.passes"))
    assert not bad, f"compiler core modules importing methods: {bad}"


def test_front_doors_import_only_the_method_registry():
    g = graph(module_level=False)
    doors = [m for m in g if m in FRONT_DOORS or m.startswith("fxprune.cli")]
    bad = sorted((a, b) for a in doors for b in g.successors(a)
                 if b.startswith("fxprune.passes") and b != "fxprune.passes")
    assert not bad, f"front doors importing a method's internals (use fxprune.passes.METHODS): {bad}"


def test_no_import_cycle_at_module_level():
    cycles = list(nx.simple_cycles(graph(module_level=True)))
    assert not cycles, f"import cycles: {cycles}"


def test_no_import_cycle_through_function_level_imports_either():
    """Lazy imports keep ``import fxprune`` cheap; they must still run one way."""
    cycles = list(nx.simple_cycles(graph(module_level=False)))
    assert not cycles, f"import cycles (some imports inside functions): {cycles}"


def test_methods_do_not_import_front_doors():
    g = graph(module_level=False)
    bad = sorted((a, b) for a, b in g.edges if a.startswith("fxprune.passes") and a != "fxprune.passes"
                 and (b in FRONT_DOORS or b.startswith("fxprune.cli")))
    assert not bad, f"methods importing a front door (imports run front doors -> methods -> core): {bad}"


def test_one_definition_of_each_shared_helper():
    defined: dict[str, list[str]] = {name: [] for name in ONE_DEFINITION}
    for module, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in defined:
                defined[node.name].append(module)
    assert all(defined.values()), defined  # each exists once, so the scan sees them
    twice = {name: where for name, where in defined.items() if len(where) > 1}
    assert not twice, f"defined in more than one module: {twice}"
