"""The .fxp security model: a file cannot choose what code runs (fxprune.io, fxprune.sources, the CLI).

Crafted files name ``os:system``, ``subprocess:run``, ``timeit:timeit`` and a module with
import-time side effects; hostile pickles carry a ``__reduce__`` that would write a marker
file next to a decoy ``nn.Module``. Through ``fxprune.load`` and every CLI command: a named
error, exit code 2 with one line naming the flag, and the marker never appears.
"""
from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import fxprune
import fxprune.models as zoo
from fxprune.io import PickledFileError, UntrustedSourceError, model_source
from cli_run import run


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """A pruned lenet5 saved once: (path, payload as torch.load reads it, input, output)."""
    d = tmp_path_factory.mktemp("lenet")
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    result = fxprune.compile(zoo.get("lenet5", in_channels=1).eval(), x, "l1", 0.5, validate=False)
    fxprune.save(result, d / "lenet.fxp")
    with torch.no_grad():
        y = result.module(x)
    return d / "lenet.fxp", torch.load(d / "lenet.fxp", weights_only=True), x, y


def write_with_source(lenet, path: Path, source: dict) -> Path:
    """The lenet .fxp file with another (valid-looking) source; weights and digest untouched."""
    payload = dict(lenet[1], source=source)
    torch.save(payload, path)
    return path


# ----------------------------------------------------------------------------- crafted sources


def crafted_sources(marker: Path) -> dict[str, dict]:
    """Sources naming callables that would create ``marker`` if called with their kwargs."""
    return {
        "os:system": {"kind": "class", "name": "os:system", "kwargs": {"command": f"touch {marker}"}},
        "subprocess:run": {"kind": "class", "name": "subprocess:run", "kwargs": {"args": ["touch", str(marker)]}},
        "timeit:timeit": {"kind": "class", "name": "timeit:timeit",
                          "kwargs": {"stmt": f"open({str(marker)!r}, 'w').close()", "number": 1}},
    }


CALLABLES = list(crafted_sources(Path("m")))


@pytest.mark.parametrize("name", CALLABLES)
def test_load_never_imports_or_calls_a_named_callable(lenet, tmp_path, name):
    marker = tmp_path / "marker"
    path = write_with_source(lenet, tmp_path / "crafted.fxp", crafted_sources(marker)[name])
    with pytest.raises(UntrustedSourceError) as info:
        fxprune.load(path)
    message = str(info.value)
    assert name in message and "no code was run" in message and "trust_source=True" in message
    assert "model=" in message and info.value.class_name == name
    # even when trusted, only an nn.Module subclass is ever called
    with pytest.raises(fxprune.InputError, match="not an nn.Module subclass, so it was not called"):
        fxprune.load(path, trust_source=True)
    assert not marker.exists()


@pytest.mark.parametrize("name", CALLABLES)
@pytest.mark.parametrize("command", ["groups", "prune", "validate"])
def test_cli_refuses_a_named_callable_in_one_line(lenet, tmp_path, name, command):
    marker = tmp_path / "marker"
    path = write_with_source(lenet, tmp_path / "crafted.fxp", crafted_sources(marker)[name])
    argv = [command, path] + (["--out", tmp_path / "out.fxp"] if command == "prune" else [])
    code, out, err = run(argv)
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("fxprune-trace: error: ") and "--trust-source" in err and "no code was run" in err
    assert name in err
    code, out, err = run([*argv, "--trust-source"])  # trusted: imported, but never called
    assert code == 2 and len(err.splitlines()) == 1 and "not an nn.Module subclass" in err, err
    assert not marker.exists() and not (tmp_path / "out.fxp").exists()


@pytest.fixture
def side_effect_module(tmp_path, monkeypatch):
    """A module on sys.path whose import writes a marker file; it re-exports LeNet5 as ``Net``."""
    name = f"fxp_side_effect_{tmp_path.name.replace('-', '_')}"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from fxprune.models.lenet5 import LeNet5 as Net\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


def test_module_with_import_side_effects_is_not_imported(lenet, tmp_path, side_effect_module):
    name, marker = side_effect_module
    source = {"kind": "class", "name": f"{name}:Net", "kwargs": {"in_channels": 1}}
    path = write_with_source(lenet, tmp_path / "side.fxp", source)
    with pytest.raises(UntrustedSourceError, match="nothing was imported and no code was run"):
        fxprune.load(path)
    for command in ("groups", "prune", "validate"):
        argv = [command, path] + (["--out", tmp_path / "out.fxp"] if command == "prune" else [])
        code, out, err = run(argv)
        assert code == 2 and len(err.splitlines()) == 1 and "--trust-source" in err, (command, err)
    assert not marker.exists() and name not in sys.modules
    # the user's own instance: nothing the file names is imported
    gm = fxprune.load(path, model=zoo.get("lenet5", in_channels=1))
    assert not marker.exists() and name not in sys.modules
    # trusted: importing runs the module's code (documented), and the nn.Module subclass is built
    trusted = fxprune.load(path, trust_source=True)
    assert marker.exists()
    x, y = lenet[2], lenet[3]
    with torch.no_grad():
        assert torch.equal(trusted(x), y) and torch.equal(gm(x), y)


def test_trusted_cli_rebuilds_a_user_class(lenet, tmp_path, side_effect_module):
    name, marker = side_effect_module
    path = write_with_source(lenet, tmp_path / "side.fxp",
                             {"kind": "class", "name": f"{name}:Net", "kwargs": {"in_channels": 1}})
    code, out, err = run(["validate", path, "--trust-source"])
    assert code == 0 and out.strip().endswith("ok"), err
    assert marker.exists()


def test_class_kwargs_must_be_plain_data(lenet, tmp_path):
    source = {"kind": "class", "name": "fxprune.models.lenet5:LeNet5", "kwargs": {"in_channels": torch.ones(1)}}
    path = write_with_source(lenet, tmp_path / "k.fxp", source)
    with pytest.raises(fxprune.InputError, match="'source.kwargs.in_channels'"):
        fxprune.load(path, trust_source=True)


# ----------------------------------------------------------------------------- registries


def test_registry_kwargs_cannot_fetch_weights(lenet, tmp_path):
    for key in ("weights", "pretrained", "weights_backbone", "checkpoint_path"):
        source = {"kind": "torchvision.models", "name": "resnet18", "kwargs": {key: "DEFAULT"}}
        path = write_with_source(lenet, tmp_path / "w.fxp", source)
        with pytest.raises(fxprune.InputError, match=f"field 'source.kwargs' has '{key}'"):
            fxprune.load(path)


def test_unknown_registry_names_are_refused(lenet, tmp_path):
    for kind in ("fxprune.models", "torchvision.models"):
        path = write_with_source(lenet, tmp_path / "u.fxp", {"kind": kind, "name": "os.system", "kwargs": {}})
        with pytest.raises(fxprune.InputError, match="unknown .* model 'os.system'"):
            fxprune.load(path)
    with pytest.raises(fxprune.InputError, match="unknown model name 'os:system'"):
        model_source(None, "os:system")


def test_torchvision_source_builds_without_downloading(monkeypatch):
    from torchvision.models import WeightsEnum

    def no_download(*args, **kwargs):
        raise AssertionError("pretrained weights were requested")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", no_download)
    model = fxprune.io.build_model({"kind": "torchvision.models", "name": "ssdlite320_mobilenet_v3_large",
                                    "kwargs": {"num_classes": 3}})
    assert isinstance(model, nn.Module)


@pytest.fixture
def fake_timm(monkeypatch):
    """A stand-in ``timm`` registry (timm is optional) that builds lenet5 and records its calls."""
    calls: list[tuple[str, dict]] = []
    timm = types.ModuleType("timm")
    timm.list_models = lambda *args, **kwargs: ["fake_lenet"]

    def create_model(name: str, **kwargs):
        calls.append((name, dict(kwargs)))
        kwargs.pop("pretrained")
        return zoo.get("lenet5", **kwargs)

    timm.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", timm)
    return calls


def test_timm_names_are_a_registry_when_timm_is_installed(fake_timm, tmp_path, lenet):
    x, y = lenet[2], lenet[3]
    assert model_source(None, "fake_lenet", {"in_channels": 1}) == {
        "kind": "timm", "name": "fake_lenet", "kwargs": {"in_channels": 1}}
    path = write_with_source(lenet, tmp_path / "timm.fxp",
                             {"kind": "timm", "name": "fake_lenet", "kwargs": {"in_channels": 1}})
    with torch.no_grad():
        assert torch.equal(fxprune.load(path)(x), y)
    assert fake_timm == [("fake_lenet", {"pretrained": False, "in_channels": 1})]
    path = write_with_source(lenet, tmp_path / "other.fxp", {"kind": "timm", "name": "other", "kwargs": {}})
    with pytest.raises(fxprune.InputError, match="unknown timm model 'other'"):
        fxprune.load(path)


def test_timm_source_without_timm_is_a_named_error(monkeypatch, tmp_path, lenet):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    path = write_with_source(lenet, tmp_path / "timm.fxp", {"kind": "timm", "name": "resnet18", "kwargs": {}})
    with pytest.raises(fxprune.InputError, match="install timm"):
        fxprune.load(path)
    with pytest.raises(fxprune.InputError, match="unknown model name"):
        model_source(None, "vit_tiny_patch16_224")


# ----------------------------------------------------------------------------- hostile pickles


class Hostile:
    """Unpickling this writes the marker file (what an attacker's payload would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


class Decoy(nn.Module):
    """An innocent-looking model carrying the hostile payload."""

    def __init__(self, marker: Path):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.extra = Hostile(marker)


def hostile_files(d: Path, marker: Path) -> dict[str, Path]:
    """The hostile pickle as a torch zip file, a legacy torch file and a raw pickle."""
    files = {"zip": d / "hostile.pt", "legacy": d / "hostile_legacy.pt", "raw": d / "hostile.pkl"}
    torch.save(Decoy(marker), files["zip"])
    torch.save(Decoy(marker), files["legacy"], _use_new_zipfile_serialization=False)
    files["raw"].write_bytes(pickle.dumps({"model": Decoy(marker)}))
    return files


@pytest.mark.parametrize("kind", ["zip", "legacy", "raw"])
def test_load_never_unpickles(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = hostile_files(tmp_path, marker)[kind]
    with pytest.raises(PickledFileError, match="never unpickles, so no code was run") as info:
        fxprune.load(path)
    assert "builtins.exec" in info.value.globals
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["zip", "legacy", "raw"])
@pytest.mark.parametrize("command", ["groups", "prune", "validate"])
def test_cli_never_unpickles_without_the_flag(tmp_path, kind, command):
    marker = tmp_path / "pwned"
    path = hostile_files(tmp_path, marker)[kind]
    argv = [command, path, "--input-shape", "1,4"] if command != "validate" else [command, path]
    argv += ["--out", tmp_path / "out.fxp"] if command == "prune" else []
    code, out, err = run(argv)
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "--no-weights-only" in err and "no code was run" in err and "Decoy" in err
    assert not marker.exists() and not (tmp_path / "out.fxp").exists()


def test_flag_unpickles_only_what_looks_like_a_model(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "not_a_model.pt"
    torch.save({"x": Hostile(marker)}, path)
    code, out, err = run(["groups", path, "--no-weights-only", "--input-shape", "1,4"])
    assert code == 2 and len(err.splitlines()) == 1 and "not a model" in err and "builtins.exec" in err, err
    assert not marker.exists()


def test_flag_unpickles_a_trusted_model_after_a_warning(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(zoo.get("lenet5", in_channels=1).eval(), path)
    code, out, err = run(["groups", path])
    assert code == 2 and "--no-weights-only" in err and "LeNet5" in err, err
    code, out, err = run(["groups", path, "--no-weights-only"])
    assert code == 0 and "ChannelGraph" in out, err
    assert len(err.splitlines()) == 1 and "warning" in err and "runs code" in err


# ----------------------------------------------------------------------------- the user's model


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(x.mean((2, 3)))


def test_load_with_model_leaves_the_users_model_exactly_as_it_was(tmp_path):
    torch.manual_seed(0)
    model = SmallNet()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    model.head.eval()  # a mixed mode: every submodule's flag must survive
    x = torch.randn(2, 1, 8, 8)
    result = fxprune.compile(model, x, "l1", 0.5, validate=False)
    fxprune.save(result, tmp_path / "small.fxp")
    assert fxprune.io.read(tmp_path / "small.fxp")["source"]["kind"] == "class"
    modes = [m.training for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert modes == [True, True, True, False]

    gm = fxprune.load(tmp_path / "small.fxp", model=model)

    assert [m.training for m in model.modules()] == modes
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.data_ptr() not in {q.data_ptr() for q in gm.parameters()} for p in model.parameters())
    assert not gm.training
    with torch.no_grad():
        assert torch.equal(gm(x), result.module.eval()(x))


def test_load_rejects_a_model_that_is_not_a_module(lenet):
    with pytest.raises(fxprune.InputError, match="model= must be an nn.Module"):
        fxprune.load(lenet[0], model="lenet5")
