"""A TraceError names the user's file and line, wherever the user's files live.

Frames are skipped by directory (torch's and fxprune's own package directories),
never because a path merely contains the word "fxprune".
"""
from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from pathlib import Path

import pytest
import torch

import fxprune
import fxprune.models
import fxprune.passes
from fxprune.trace import _is_library_file, _user_frame

UNTRACEABLE = '''\
import torch
from torch import nn


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:  # data-dependent control flow
            return y
        return -y
'''
BAD_LINE = 12


def _load_model(directory: Path) -> torch.nn.Module:
    """Write the untraceable model to ``directory/model.py``, import it, return an instance."""
    directory.mkdir(parents=True)
    path = directory / "model.py"
    path.write_text(UNTRACEABLE)
    name = f"user_model_{abs(hash(str(directory)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module.DataDependent()


@pytest.mark.parametrize("folder", ["my_fxprune_project", "fxprune", "fxprune/passes", "torch_stuff"])
def test_trace_error_names_the_user_file_and_line(tmp_path: Path, folder: str) -> None:
    model = _load_model(tmp_path / folder)
    with pytest.raises(fxprune.TraceError) as info:
        fxprune.trace(model, torch.randn(2, 4))
    message = str(info.value)
    assert f"{tmp_path / folder / 'model.py'}:{BAD_LINE} in forward" in message, message
    assert "if y.sum() > 0" in message and "unknown location" not in message


def _frame(path: str, line: int = 1) -> traceback.FrameSummary:
    return traceback.FrameSummary(path, line, "f", line=f"line {line}")


def test_library_files_are_fxprune_and_torch_package_dirs_only() -> None:
    fxprune_dir = os.path.dirname(fxprune.__file__)
    for package in (fxprune, fxprune.passes, fxprune.models, torch):
        assert _is_library_file(package.__file__), package.__name__
    assert _is_library_file(os.path.join(fxprune_dir, "rules", "x.py"))
    for outside in (fxprune_dir + "_extra/model.py", os.path.dirname(torch.__file__) + "vision/ops.py",
                    "/home/me/fxprune/model.py", "<string>"):
        assert not _is_library_file(outside), outside


def test_user_frame_is_the_innermost_outside_the_libraries() -> None:
    user = "/home/me/fxprune-work/model.py"
    stack = traceback.StackSummary.from_list([
        _frame(fxprune.__file__, 10), _frame(user, 7), _frame(fxprune.passes.__file__, 3), _frame(torch.__file__, 5),
    ])
    assert _user_frame(stack) == f'{user}:7 in f: "line 7"'
    only_libraries = traceback.StackSummary.from_list([_frame(fxprune.__file__), _frame(torch.__file__)])
    assert _user_frame(only_libraries) is None
