"""Device-agnostic methods, compiler and CLI.

* A static check (no GPU needed): no ``.numpy()`` in the installed package sources
  (``fxprune/`` and ``passes/``) unless the same call chain goes through ``.cpu()``.
* The device test mode: ``FXPRUNE_TEST_DEVICE=cuda python -m pytest tests/test_device_agnostic.py``
  runs every method, ``mask``/``rewrite``/``validate`` and the CLI with the model on that
  device and the data on the CPU (the methods move it); without the variable the tests run
  on the CPU, and they are skipped where the named device is absent (``conftest.test_device``).
"""
from __future__ import annotations

import ast
import copy
import dataclasses
from pathlib import Path

import pytest
import torch

import fxprune
import fxprune.passes
from cli_run import run as run_cli
from conftest import assert_same_state, check_equivalences, exact_plan, state_snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- static: .numpy() only after .cpu()

def package_sources() -> list[Path]:
    """Every .py file of the installed fxprune package and its methods (fxprune.passes)."""
    roots = {Path(fxprune.__file__).resolve().parent, Path(fxprune.passes.__file__).resolve().parent}
    return sorted({p.resolve() for root in roots for p in root.rglob("*.py")})


def chain_goes_through_cpu(node: ast.AST) -> bool:
    """Whether the call chain ending at ``node`` (``a.b()[i].c()`` ...) contains a ``.cpu()`` call."""
    while True:
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr == "cpu":
                return True
            node = node.func
        elif isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        else:
            return False


def numpy_without_cpu(source: str) -> list[tuple[int, str]]:
    """``(line, code)`` of every ``x.numpy()`` call whose chain has no ``.cpu()``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "numpy" \
                and not node.args and not node.keywords and not chain_goes_through_cpu(node.func.value):
            out.append((node.lineno, ast.unparse(node)))
    return out


def test_the_checker_flags_what_it_should():
    src = ("a = t.numpy()\nb = t.detach().cpu().double().numpy()\nc = t.cpu()[1:].numpy()\n"
           "d = f(t.cpu()).numpy()\ne = t.detach().double().numpy()\nf = np.asarray(t)\n")
    assert [line for line, _ in numpy_without_cpu(src)] == [1, 4, 5]


def test_no_numpy_on_a_tensor_that_may_be_on_a_device():
    files = package_sources()
    assert any(p.name == "taylor.py" for p in files) and any(p.name == "api.py" for p in files)
    bad = [f"{p}:{line}: {code}" for p in files for line, code in numpy_without_cpu(p.read_text())]
    assert not bad, "call .cpu() before .numpy() (the tensor may be on a GPU):\n" + "\n".join(bad)


# ---------------------------------------------------------------- every method on the test device

SCORE_METHODS = ["l1", "random", "layer_random", "layer_weightnorm", "taylor", "snip", "grasp", "actgrad",
                 "layer_actgrad", "layer_sampling", "layer_greedy_fs", "submodular"]
DETERMINISTIC = {"l1", "random", "layer_random", "layer_weightnorm"}  # no data: the same plan on any device


@pytest.fixture(scope="module")
def small_data(fashion):
    images, labels = fashion
    return [(images[i:i + 16], labels[i:i + 16]) for i in (0, 16)]


def overlap(a: dict, b: dict) -> float:
    """Kept units in both plans / kept units in either (1.0: the same plan)."""
    both = sum(len(set(a[g]) & set(b[g])) for g in a)
    either = sum(len(set(a[g]) | set(b[g])) for g in a)
    return both / max(either, 1)


def on_device(module: torch.nn.Module) -> set[torch.device]:
    return {t.device for t in [*module.parameters(), *module.buffers()]}


@pytest.mark.parametrize("method", SCORE_METHODS)
def test_method_runs_with_the_model_on_the_test_device(method, test_device, lenet, small_data, fashion):
    x = fashion[0][:2]
    fields = {f.name for f in dataclasses.fields(fxprune.passes.METHODS[method])}
    options = {k: v for k, v in dict(data=small_data, progress=False, seed=1).items() if k in fields}
    if method == "layer_greedy_fs":
        options["groups"] = ("conv1",)  # ~units^2 forwards per group: one small group
    reference = fxprune.compile(lenet, x, method, 0.5, validate=False, **options)
    model = copy.deepcopy(lenet).to(test_device)
    before = state_snapshot(model)
    res = fxprune.compile(model, x.to(test_device), method, 0.5, **options)  # data stays on the CPU
    assert_same_state(before, model)
    assert res.report.validation.startswith("onnx ok"), res.report.validation
    assert on_device(res.module) == on_device(model)  # the pruned model lives where the model was
    assert {g: len(k) for g, k in res.plan.items()} == {g: len(k) for g, k in reference.plan.items()}
    if method in DETERMINISTIC or test_device.type == "cpu":
        assert res.plan == reference.plan
    else:  # float sums in another order may swap units at the selection boundary
        assert overlap(res.plan, reference.plan) >= 0.75


def test_itpcc_runs_with_the_model_on_the_test_device(test_device, lenet, small_data, fashion):
    x = fashion[0][:2].to(test_device)
    model = copy.deepcopy(lenet).to(test_device)
    res = fxprune.compile(model, x, "itpcc", sparsity=0.25, data=small_data, train={"epochs": 1},
                          threshold="target", progress=False)  # "target": prunes to the target after 2 steps
    assert res.report.validation.startswith("onnx ok"), res.report.validation
    assert res.report.params_after < res.report.params_before
    assert on_device(res.module) == on_device(model)
    with torch.no_grad():
        assert torch.isfinite(res.module(x)).all()


# ---------------------------------------------------------------- compiler core on the test device

def test_mask_rewrite_and_validate_on_the_test_device(test_device, resnet):
    model = copy.deepcopy(resnet).to(test_device)
    x = torch.randn(2, 1, 32, 32, device=test_device)
    check_equivalences(model, x)  # rewrite == mask == zeroed produce slices, on the device
    graph = fxprune.analyze(model, x)
    pruned = fxprune.rewrite(graph.gm, graph, exact_plan(graph))
    report = fxprune.validate(pruned, (x.cpu(),))  # CPU inputs: moved to the model; ONNX from a CPU copy
    assert report.ok
    assert on_device(pruned) == on_device(model)  # validation exported a copy, the module did not move


# ---------------------------------------------------------------- the CLI's --device

def test_cli_prunes_and_validates_on_the_test_device(test_device, lenet, tmp_path):
    ckpt = tmp_path / "lenet.pt"
    torch.save(lenet.state_dict(), ckpt)
    out = tmp_path / "lenet.fxp"
    code, stdout, stderr = run_cli(["prune", ckpt, "--model", "lenet5", "--in-channels", "1", "--device",
                                    str(test_device), "--method", "taylor", "--data", "bundled",
                                    "--calibration-size", "32", "--latency-runs", "0", "--out", out])
    assert code == 0, stderr
    assert "max |onnxruntime - torch|" in stdout
    code, stdout, stderr = run_cli(["validate", out, "--device", str(test_device)])
    assert code == 0 and stdout.rstrip().endswith("ok"), stderr


def test_cli_rejects_a_device_this_machine_lacks(tmp_path):
    absent = next((d for d in ("cuda:63", "mps", "xpu") if not _has(d)), None)
    if absent is None:
        pytest.skip("every candidate device exists here")
    code, _, stderr = run_cli(["prune", tmp_path / "x.pt", "--device", absent, "--out", tmp_path / "y.fxp"])
    assert code == 2
    assert stderr.count("\n") == 1 and "no such device" in stderr and "Traceback" not in stderr
    code, _, stderr = run_cli(["groups", tmp_path / "x.pt", "--device", "gpu0"])
    assert code == 2 and "must be a torch device" in stderr


def _has(name: str) -> bool:
    from conftest import device_available

    try:
        return device_available(torch.device(name))
    except (RuntimeError, ValueError):
        return False
