"""The README's examples run as written: the Python blocks and the command-line block."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", TEXT, flags=re.S)


def test_readme_has_its_examples():
    # the 20-line example, fxprune.compile, a pipeline of passes; the quick start and the CLI
    assert len(PYTHON_BLOCKS) == 3 and len(BASH_BLOCKS) == 2


def test_readme_fits_on_a_few_screens():
    lines = TEXT.splitlines()
    assert len(lines) <= 230, f"README.md has {len(lines)} lines; move details to docs/"
    for section in ("## Quick start", "## Example", "## Three ways in", "## Methods", "## Supported models",
                    "## Limitations", "## Security", "## Supported versions"):
        assert f"\n{section}\n" in TEXT, f"README.md lost its section {section!r}"


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_python_example_runs(index, monkeypatch):
    module = types.ModuleType(f"readme_example_{index}")  # dataclasses need a real module
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(PYTHON_BLOCKS[index], f"README.md example {index + 1}", "exec"), module.__dict__)


@pytest.mark.slow
def test_readme_command_line_example_runs(tmp_path):
    block = next(b for b in BASH_BLOCKS if "fxprune-trace" in b)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "MACs" in out.stdout and "Conv2d(3, 32" in out.stdout
    assert (tmp_path / "resnet18-pruned.fxp").is_file() and (tmp_path / "resnet18-pruned.onnx").is_file()


def test_quick_start_has_exactly_two_commands():
    quick = TEXT.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in quick.strip().splitlines() if line.strip()]
    assert len(commands) == 2 and "pytest" in commands[1] and "fxprune.demo" in commands[0]
