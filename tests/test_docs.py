"""The documentation stays true: docs/*.md examples run, and what the docs name exists.

* every ```python block of docs/*.md and CONTRIBUTING.md runs as written (blocks not meant to run are
  ```text or ```console);
* every relative link of README.md, the other top-level guides and docs/*.md points
  to a file that exists (and to a heading or anchor that exists);
* every ``fxprune.x.y`` name the docs write in backticks imports or resolves;
* every command shown (``python tools/...``, ``fxprune-trace ...``, ``python -m fxprune.demo``)
  names a script that exists and only options that script or parser defines;
* docs/cli.md documents every option and command of ``fxprune-trace`` and the
  methods table names every method; each benchmark table has its command beside it;
* no issue numbers in user-facing docs; LICENSE and CHANGELOG match pyproject.
"""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
import sys
import tomllib
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
GUIDES = [ROOT / name for name in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")]
USER_DOCS = [p for p in GUIDES + DOCS if p.exists()]


def blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of ``path`` in ``language`` (```language ... ```)."""
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)


def prose(path: Path) -> str:
    """The text of ``path`` without its fenced code blocks."""
    return re.sub(r"```.*?```", "", path.read_text(), flags=re.S)


EXECUTED = DOCS + [ROOT / "CONTRIBUTING.md"]
DOC_EXAMPLES = [(p, i) for p in EXECUTED for i in range(len(blocks(p, "python")))]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("path,index", DOC_EXAMPLES, ids=[f"{p.name}-{i + 1}" for p, i in DOC_EXAMPLES])
def test_docs_python_example_runs(path: Path, index: int, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    module = types.ModuleType(f"docs_example_{path.stem}_{index}".replace("-", "_"))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    code = compile(blocks(path, "python")[index], f"{path.name} example {index + 1}", "exec")
    exec(code, module.__dict__)


def test_docs_have_runnable_examples() -> None:
    names = {p.name for p, _ in DOC_EXAMPLES}
    assert {"methods.md", "how-it-works.md", "training.md", "CONTRIBUTING.md"} <= names, names


# --- links and anchors -------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file: its headings' slugs and its ``<a id="...">`` tags."""
    text = path.read_text()
    found = {slug(h) for h in re.findall(r"^#+ (.+)$", prose(path), flags=re.M)}
    return found | set(re.findall(r'<a id="([^"]+)"', text))


def relative_links(path: Path) -> list[str]:
    """The targets of ``[text](target)`` links that are not URLs."""
    targets = re.findall(r"\]\(([^)\s]+)\)", prose(path))
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading or anchor #{anchor} in {dest.name}")
    assert not broken, f"{path.name}: " + "; ".join(broken)


# --- names ---------------------------------------------------------------------------------------

def resolve(dotted: str) -> object:
    """Import the longest importable prefix of ``dotted``, then get the remaining attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def named_apis(path: Path) -> set[str]:
    """``fxprune.x.y`` names at the start of an inline code span."""
    return set(re.findall(r"`(fxprune(?:\.[A-Za-z_]\w*)+)", prose(path)))


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.name)
def test_named_apis_exist(path: Path) -> None:
    missing = []
    for name in sorted(named_apis(path)):
        try:
            resolve(name)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    assert not missing, f"{path.name} names what does not exist: " + "; ".join(missing)


# --- commands ------------------------------------------------------------------------------------

def commands(path: Path) -> list[list[str]]:
    """Every simple command of the bash and console blocks of ``path``, as argv lists."""
    found = []
    for block in blocks(path, "bash") + blocks(path, "console"):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            lexer = shlex.shlex(re.sub(r"^\s*\$ ", "", line), posix=True, punctuation_chars=True)
            argv: list[str] = []
            for token in list(lexer) + [";"]:
                if token in {";", "&", "&&", "|", "||"}:
                    found += [argv] if argv else []
                    argv = []
                else:
                    argv.append(token)
    return found


def trace_parsers() -> dict[str, argparse.ArgumentParser]:
    """``fxprune-trace``'s sub-command parsers by name."""
    from fxprune.cli.parser import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def unknown_options(argv: list[str], parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    """The ``--options`` of ``argv`` that the script or parser it runs does not define."""
    flags = [t.split("=", 1)[0] for t in argv if t.startswith("--")]
    if argv[0] == "fxprune-trace" or argv[:2] == ["python", "tools/trace"]:
        rest = argv[1:] if argv[0] == "fxprune-trace" else argv[2:]
        command = next((t for t in rest if not t.startswith("-")), None)
        if command is None:
            return [f for f in flags if f not in {"--help", "--version"}]
        known = options_of(parsers[command]) if command in parsers else set()
        return [f"{command} {f}" for f in flags if f not in known] or ([] if command in parsers else [command])
    script = next((t for t in argv if t.startswith("tools/")), None)
    if argv[:3] == ["python", "-m", "fxprune.demo"]:
        script = "fxprune/demo.py"
    if script is None:
        return []
    if not (ROOT / script).is_file():
        return [f"no script {script}"]
    source = (ROOT / script).read_text()
    return [f"{script} {f}" for f in flags if f'"{f}"' not in source and f"'{f}'" not in source]


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.name)
def test_shown_commands_use_existing_scripts_and_options(path: Path) -> None:
    parsers = trace_parsers()
    bad = [u for argv in commands(path) for u in unknown_options(argv, parsers)]
    assert not bad, f"{path.name}: " + "; ".join(bad)


def test_cli_doc_covers_every_command_and_option() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    missing = [f"section for {name}" for name in trace_parsers() if f"## `{name}`" not in text]
    for name, parser in trace_parsers().items():
        missing += [f"{name} {o}" for o in options_of(parser) if o.startswith("--") and o != "--help"
                    and f"`{o}" not in text]
    assert not missing, "docs/cli.md does not document: " + ", ".join(missing)


def test_cli_doc_options_exist() -> None:
    documented = set(re.findall(r"^\| `(--[a-z-]+)", (ROOT / "docs" / "cli.md").read_text(), flags=re.M))
    defined = set().union(*(options_of(p) for p in trace_parsers().values()))
    assert documented and not documented - defined, f"documented but not defined: {documented - defined}"


def test_methods_tables_name_every_method() -> None:
    from fxprune.passes import METHODS

    for path in (ROOT / "README.md", ROOT / "docs" / "methods.md"):
        rows = " ".join(re.findall(r"^\|.*$", path.read_text(), flags=re.M))
        missing = [m for m in METHODS if f"`{m}`" not in rows]
        assert not missing, f"{path.name}'s methods table misses {missing}"


def test_every_benchmark_table_has_its_command() -> None:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert len(sections) >= 10
    for section in sections:
        title = section.splitlines()[0]
        if re.search(r"^\|.*\|$", section, flags=re.M):
            shown = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
            assert any("python " in b for b in shown), f"benchmarks.md '{title}': a table without its command"


# --- words ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.name)
def test_no_issue_numbers(path: Path) -> None:
    text = path.read_text()
    found = re.findall(r"\bissues? #?\d+|(?<![\w/&])#\d+\b", text, flags=re.I)
    assert not found, f"{path.name} refers to issue numbers a reader cannot follow: {found}"


def test_readme_names_its_papers() -> None:
    found = re.findall(r".{30}\bthe paper\b.{30}", prose(ROOT / "README.md"), flags=re.I | re.S)
    assert not found, f"README.md says 'the paper' without naming it: {found}"


# --- license and changelog -----------------------------------------------------------------------

def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_license_is_the_apache_license_pyproject_declares() -> None:
    text = (ROOT / "LICENSE").read_text()
    declared = project()["license"]
    assert (declared.get("text") if isinstance(declared, dict) else declared) == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    for section in range(1, 10):
        assert re.search(rf"^\s*{section}\. [A-Z]", text, flags=re.M), f"LICENSE misses section {section}"
    assert "END OF TERMS AND CONDITIONS" in text and "Copyright 2026 The fxprune authors" in text


def test_changelog_has_the_released_version_and_unreleased() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## \[Unreleased\]", text, flags=re.M)
    assert re.search(rf"^## \[{re.escape(project()['version'])}\]", text, flags=re.M)
