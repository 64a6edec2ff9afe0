"""Shared fixtures and helpers for fxprune's tests."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fxprune


def pytest_configure(config: pytest.Config) -> None:
    """Register fxprune's markers (pyproject's addopts decides whether slow tests run)."""
    config.addinivalue_line(
        "markers",
        "slow: over ~10 s on 2 cores, or a subprocess/whole-pipeline run; deselect with -m 'not slow'",
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    small models gain nothing from intra-op threads, and on a busy 2-core machine torch's
    OpenMP workers stall each other (resnet110's forward: 0.04 s on 1 thread, ~11 s on 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fashion():
    """The 500 bundled Fashion-MNIST test images and their labels."""
    from fxprune.training.data import bundled

    return bundled().tensors


@pytest.fixture(scope="module")
def lenet():
    """The bundled trained LeNet-5."""
    from fxprune.demo import load_bundled_model

    return load_bundled_model()


@pytest.fixture(scope="module")
def resnet():
    """ResNet-20 (1 input channel) with random batch-norm statistics, in eval mode."""
    import fxprune.models as zoo

    torch.manual_seed(1)
    return randomize_bn(zoo.get("resnet20", in_channels=1)).eval()


def randomize_bn(model: nn.Module) -> nn.Module:
    """Give BN layers non-trivial statistics and affine params so that shifts matter."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
    return model


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    after = model.state_dict()
    assert set(before) == set(after)
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed"


def exact_plan(graph: fxprune.ChannelGraph, fraction: float = 0.5, seed: int = 0) -> dict[str, list[int]]:
    """Random keep-sets for every prunable group without normalisation members."""
    gen = torch.Generator().manual_seed(seed)
    plan = {}
    for g in graph.prunable_groups:
        if g.has_norm:
            continue
        k = max(1, int(g.units * fraction))
        plan[g.id] = sorted(torch.randperm(g.units, generator=gen)[:k].tolist())
    return plan


def zero_produce(graph: fxprune.ChannelGraph, plan: dict[str, list[int]]) -> nn.Module:
    """A copy of the analysed model with every produce slice of the removed units zeroed."""
    gm = copy.deepcopy(graph.gm)
    gm.meta.pop("fxprune", None)
    tensors = dict(gm.named_parameters()) | dict(gm.named_buffers())
    with torch.no_grad():
        for gid, kept in plan.items():
            group = graph.group(gid)
            removed = sorted(set(range(group.units)) - set(kept))
            for s in group.slices(removed):
                if s.role == "produce":
                    tensors[s.name].index_fill_(s.dim, s.index, 0.0)
    return gm


def max_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    return (a - b).abs().max().item(), max(1.0, b.abs().max().item())


def check_equivalences(model: nn.Module, x: torch.Tensor, plan_fraction: float = 0.5) -> None:
    """rewrite == mask and rewrite == zero-the-produce-slices on every exact group."""
    graph = fxprune.analyze(model, x)
    plan = exact_plan(graph, plan_fraction)
    assert plan, "expected at least one prunable group without norm members"
    with torch.no_grad():
        pruned = fxprune.rewrite(graph.gm, graph, plan)(x)
        masked = fxprune.mask(graph.gm, graph, plan)(x)
        zeroed = zero_produce(graph, plan)(x)
    diff, scale = max_diff(pruned, masked)
    assert diff <= 1e-4 * scale, f"rewrite != mask: {diff}"
    diff, scale = max_diff(pruned, zeroed)
    assert diff <= 1e-4 * scale, f"rewrite != zero-produce: {diff}"


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (a generator for module-scoped fixtures)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fxprune_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


# ---------------------------------------------------------------- device test mode

TEST_DEVICE_ENV = "FXPRUNE_TEST_DEVICE"


def device_available(device: torch.device) -> bool:
    """Whether this machine has ``device`` (CPU always; CUDA/MPS/XPU ... through their backend)."""
    if device.type == "cpu":
        return True
    backend = getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        return False
    return device.index is None or not hasattr(backend, "device_count") or device.index < backend.device_count()


@pytest.fixture(scope="session")
def test_device() -> torch.device:
    """The device the methods' device tests run on: ``FXPRUNE_TEST_DEVICE`` (default ``cpu``).

    ``FXPRUNE_TEST_DEVICE=cuda pytest tests/test_device_agnostic.py`` runs them on the GPU; the
    tests are skipped (not failed) where that device is absent, so the suite stays green on CPU."""
    import os

    name = os.environ.get(TEST_DEVICE_ENV, "cpu").strip() or "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        pytest.fail(f"{TEST_DEVICE_ENV}={name!r} is not a torch device (cpu, cuda, cuda:1 ...)")
    if not device_available(device):
        pytest.skip(f"{TEST_DEVICE_ENV}={name}: this machine has no such device")
    return device
