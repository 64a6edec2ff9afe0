"""Packaging that cannot drift: pyproject lists every package and data file, declares every
third-party module the shipped code imports, and importing fxprune is quiet and cheap.

Builds nothing: ``.ci/run`` builds the wheel and installs it into a fresh venv.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

import fxprune

ROOT = Path(__file__).resolve().parents[1]
#: Modules that only the methods or helpers needing them may import (never ``import fxprune``,
#: its passes or its CLI): gpytorch for BEP, networkx for ``ChannelGraph.to_networkx``.
LAZY_MODULES = ("gpytorch", "linear_operator", "networkx", "matplotlib")
#: Import names whose distribution is named differently, for modules that are not installed
#: (installed ones are mapped by ``importlib.metadata.packages_distributions``).
DISTRIBUTION_OF = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml", "cv2": "opencv-python"}


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def package_roots() -> dict[str, Path]:
    """The ``package-dir`` mapping: top package name -> its source directory."""
    return {name: ROOT / path for name, path in pyproject()["tool"]["setuptools"]["package-dir"].items()}


def source_packages() -> dict[str, Path]:
    """Every package in the source tree: each folder holding an ``__init__.py`` under a mapped
    directory, named as it is installed (``passes/x`` is ``fxprune.passes.x``)."""
    found = {}
    for name, root in package_roots().items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found[".".join((name, *rel))] = init.parent
    return found


def data_files() -> dict[Path, str]:
    """Every file in a package folder that is not Python source or a cache -> its package
    (the deepest package folder holding it)."""
    package_of = {folder: name for name, folder in source_packages().items()}
    files = {}
    for folder in package_of:
        for path in folder.rglob("*"):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix in (".py", ".pyc"):
                continue
            owner = next(p for p in path.parents if p in package_of)
            files[path] = package_of[owner]
    return files


def test_pyproject_lists_exactly_the_packages_of_the_tree():
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    found = set(source_packages())
    assert "fxprune.rules" in found  # the package the first wheel lost
    assert not found - listed, (f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml, "
                                "or the wheel will not contain them")
    assert not listed - found, f"pyproject lists packages without an __init__.py folder: {sorted(listed - found)}"


def test_every_source_folder_is_a_package():
    """A folder of .py files without ``__init__.py`` would be left out of the wheel silently."""
    missing = []
    for root in package_roots().values():
        for py in root.rglob("*.py"):
            folder = py.parent
            if "__pycache__" not in folder.parts and not (folder / "__init__.py").exists():
                missing.append(str(folder.relative_to(ROOT)))
    assert not missing, f"folders with Python files but no __init__.py: {sorted(set(missing))}"


def test_package_data_ships_every_data_file():
    """Each data file matches a ``[tool.setuptools.package-data]`` glob of its package
    (globbed as setuptools does, relative to the package folder)."""
    patterns = pyproject()["tool"]["setuptools"]["package-data"]
    folders = source_packages()
    files = data_files()
    assert any(path.name == "lenet5_fashion_mnist.pt" for path in files)  # the demo's checkpoint
    shipped = {path for name, folder in folders.items() for pattern in patterns.get(name, [])
               for path in folder.glob(pattern)}
    missing = sorted(str(path.relative_to(ROOT)) for path in files if path not in shipped)
    assert not missing, f"data files no [tool.setuptools.package-data] pattern ships: {missing}"


def normalise(name: str) -> str:
    """A distribution name compared as PEP 503 does."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalise(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def imported_tops(nodes) -> set[str]:
    """Top-level names of the absolute, third-party imports among the AST ``nodes``."""
    tops = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return {top for top in tops if top not in sys.stdlib_module_names and top != "fxprune"}


def third_party_imports(module_level: bool = False) -> dict[str, set[str]]:
    """Top-level module -> the shipped files importing it: every import at any depth (inside
    functions too), or only the unconditional module-level ones."""
    imported: dict[str, set[str]] = {}
    for root in package_roots().values():
        for path in root.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for top in imported_tops(tree.body if module_level else ast.walk(tree)):
                imported.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return imported


@functools.lru_cache(maxsize=None)
def installed_distributions() -> dict[str, list[str]]:
    """Import name -> distributions providing it, for what is installed (slow: scans them all)."""
    return importlib.metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    """The (normalised) distributions that provide the top-level module ``module``."""
    installed = installed_distributions().get(module)
    return {normalise(d) for d in installed} if installed else {normalise(DISTRIBUTION_OF.get(module, module))}


def test_declared_dependencies_cover_every_import():
    project = pyproject()["project"]
    required = {requirement_name(r) for r in project["dependencies"]}
    optional = {requirement_name(r) for extra in project.get("optional-dependencies", {}).values() for r in extra}
    imported = third_party_imports()
    assert {"torch", "numpy"} <= set(imported)  # the scan sees the shipped code
    undeclared = {module: sorted(files) for module, files in imported.items()
                  if not distributions_of(module) & (required | optional)}
    assert not undeclared, f"imported but declared nowhere in pyproject.toml: {undeclared}"


def test_optional_dependencies_are_imported_lazily():
    """A dependency declared only in an extra is never imported unconditionally at module level."""
    required = {requirement_name(r) for r in pyproject()["project"]["dependencies"]}
    eager = {module: sorted(files) for module, files in third_party_imports(module_level=True).items()
             if not distributions_of(module) & required}
    assert not eager, f"module-level imports of dependencies that are not required: {eager}"


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter started in ``cwd`` (outside the checkout, so that the
    installed fxprune is imported, not a folder of the working directory)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)


IMPORT_AND_CLI = f"""
import contextlib, io, json, sys
import fxprune
after_import = sorted(m for m in {LAZY_MODULES!r} if m in sys.modules)
from fxprune.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    codes = [main(["--version"]), main(["--help"])]
after_cli = sorted(m for m in {LAZY_MODULES!r} if m in sys.modules)
print(json.dumps(dict(after_import=after_import, after_cli=after_cli, codes=codes, out=out.getvalue())))
"""


def test_import_and_cli_help_are_quiet_and_skip_heavy_modules(tmp_path):
    proc = run_python(IMPORT_AND_CLI, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["after_import"] == [], f"import fxprune loaded {seen['after_import']}"
    assert seen["after_cli"] == [], f"fxprune-trace --version/--help loaded {seen['after_cli']}"
    assert seen["codes"] == [0, 0]
    assert seen["out"].startswith(f"fxprune-trace (fxprune {fxprune.__version__})\n")
    assert "usage: fxprune-trace" in seen["out"]


def test_fxprune_imports_raise_no_warning(tmp_path):
    """``-W error`` for fxprune's own imports (torch and torchvision, imported first, are not
    fxprune's to silence)."""
    code = ("import warnings, torch, torchvision\n"
            "warnings.simplefilter('error')\n"
            "import fxprune, fxprune.passes, fxprune.models, fxprune.cli, fxprune.passes.bep.saliency_gp, fxprune.passes.bep.plots\n")
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_gp_kernel_loads_on_first_use():
    """The lazily loaded kernel is the class the GP uses, still reachable under its old name."""
    from fxprune.passes.bep import saliency_gp, saliency_kernel

    assert saliency_gp.ExponentialDecayKernel is saliency_kernel.ExponentialDecayKernel
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        saliency_gp.Nope  # noqa: B018
