"""The .fxp schema and integrity checks: every malformed file is a named error that names the field.

The matrix mutates one field of a good file (missing, wrong type, out of range) and loads
it with ``fxprune.load`` and ``fxprune-trace validate``; then damaged files (truncated,
empty, random, bit-flipped, a newer format) and the ONNX pairing record.
"""
from __future__ import annotations

import copy
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import fxprune
import fxprune.models as zoo
from fxprune.io import FORMAT_VERSION, check_onnx_pair, file_sha256, weights_sha256
from cli_run import run

DELETE = object()


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A pruned lenet5 saved once: its path, payload, result, an input and the reloaded output."""
    d = tmp_path_factory.mktemp("schema")
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    result = fxprune.compile(zoo.get("lenet5", in_channels=1).eval(), x, "l1", 0.5, validate=False)
    path = d / "good.fxp"
    fxprune.save(result, path)
    gm = fxprune.load(path)
    with torch.no_grad():
        y = gm(x)
    return {"path": path, "payload": torch.load(path, weights_only=True), "result": result, "x": x, "y": y,
            "state": gm.state_dict()}


def first_group(payload: dict) -> str:
    return next(iter(payload["plan"]))


def sparse(payload: dict) -> dict:
    key = next(iter(payload["state_dict"]))
    return {**payload["state_dict"], key: payload["state_dict"][key].to_sparse()}


# (field named in the message, how, dotted path to change, new value or a function of the payload)
MATRIX: list[tuple[str, str, str, Any]] = [
    ("format", "missing", "format", DELETE),
    ("format", "wrong type", "format", 5),
    ("format", "out of range", "format", "another-format"),
    ("format_version", "missing", "format_version", DELETE),
    ("format_version", "wrong type", "format_version", "2"),
    ("format_version", "out of range", "format_version", 0),
    ("fxprune_version", "missing", "fxprune_version", DELETE),
    ("fxprune_version", "wrong type", "fxprune_version", 0.1),
    ("fxprune_version", "out of range", "fxprune_version", ""),
    ("source", "missing", "source", DELETE),
    ("source", "wrong type", "source", "lenet5"),
    ("source.name", "out of range", "source", {"kind": "class", "name": "no_colon", "kwargs": {}}),
    ("source.kind", "missing", "source.kind", DELETE),
    ("source.kind", "wrong type", "source.kind", 3),
    ("source.kind", "out of range", "source.kind", "pip"),
    ("source.name", "missing", "source.name", DELETE),
    ("source.name", "wrong type", "source.name", ["lenet5"]),
    ("source.name", "out of range", "source.name", ""),
    ("source.kwargs", "missing", "source.kwargs", DELETE),
    ("source.kwargs", "wrong type", "source.kwargs", [1]),
    ("source.kwargs", "wrong type (tensor value)", "source.kwargs", {"in_channels": torch.ones(1)}),
    ("source.kwargs", "out of range (nan)", "source.kwargs", {"in_channels": float("nan")}),
    ("source.kwargs", "out of range (reserved key)", "source.kwargs", {"weights": "DEFAULT"}),
    ("source.kwargs", "out of range (too deep)", "source.kwargs", {"a": [[[[[1]]]]]}),
    ("input_shapes", "missing", "input_shapes", DELETE),
    ("input_shapes", "wrong type", "input_shapes", "1,1,28,28"),
    ("input_shapes", "wrong type (float size)", "input_shapes", [[1, 1, 28.0, 28]]),
    ("input_shapes", "out of range (empty)", "input_shapes", []),
    ("input_shapes", "out of range (zero size)", "input_shapes", [[1, 1, 0, 28]]),
    ("input_shapes", "out of range (rank 9)", "input_shapes", [[1] * 9]),
    ("input_shapes", "out of range (huge)", "input_shapes", [[1 << 14, 1 << 14, 28, 28]]),
    ("input_shapes", "out of range (17 inputs)", "input_shapes", [[1, 1, 28, 28]] * 17),
    ("plan", "missing", "plan", DELETE),
    ("plan", "wrong type", "plan", [[0, 1]]),
    ("plan", "wrong type (key)", "plan", {3: [0]}),
    ("plan", "wrong type (units)", "plan", lambda p: {first_group(p): "0,1"}),
    ("plan", "out of range (negative)", "plan", lambda p: {first_group(p): [-1, 0]}),
    ("plan", "out of range (duplicate)", "plan", lambda p: {first_group(p): [0, 0]}),
    ("state_dict", "missing", "state_dict", DELETE),
    ("state_dict", "wrong type", "state_dict", [torch.ones(1)]),
    ("state_dict", "wrong type (value)", "state_dict", {"conv1.weight": [1.0]}),
    ("state_dict", "out of range (empty key)", "state_dict", {"": torch.ones(1)}),
    ("state_dict", "out of range (sparse)", "state_dict", sparse),
    ("report", "wrong type", "report", "params 12k"),
    ("report.params_after", "wrong type", "report.params_after", "12"),
    ("report.params_after", "out of range", "report.params_after", -1),
    ("weights_sha256", "missing", "weights_sha256", DELETE),
    ("weights_sha256", "wrong type", "weights_sha256", 5),
    ("weights_sha256", "out of range", "weights_sha256", "zz"),
    ("onnx", "wrong type", "onnx", "x.onnx"),
    ("onnx.file", "missing", "onnx", {"sha256": "0" * 64}),
    ("onnx.file", "out of range", "onnx", {"file": "../x.onnx", "sha256": "0" * 64}),
    ("onnx.sha256", "wrong type", "onnx", {"file": "x.onnx", "sha256": 5}),
]
IDS = [f"{field}-{how}" for field, how, _, _ in MATRIX]


def changed(payload: dict, dotted: str, value: Any) -> dict:
    """A deep copy of ``payload`` with field ``dotted`` (``"source.kind"``) set to ``value``
    (removed for ``DELETE``; a callable gets the payload)."""
    out = copy.deepcopy(payload)
    *parents, last = dotted.split(".")
    target = out
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value(payload) if callable(value) else value
    return out


def write(tmp_path: Path, payload: dict, name: str = "case.fxp") -> Path:
    torch.save(payload, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("field,how,dotted,value", MATRIX, ids=IDS)
def test_malformed_field_is_a_named_input_error(good, tmp_path, field, how, dotted, value):
    path = write(tmp_path, changed(good["payload"], dotted, value))
    with pytest.raises(fxprune.InputError) as info:
        fxprune.load(path)
    assert f"'{field}" in str(info.value), str(info.value)
    code, out, err = run(["validate", path])
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert f"'{field}" in err and err.startswith("fxprune-trace: error: ")


@pytest.mark.parametrize("field,how,dotted,value", MATRIX[9:24:3], ids=IDS[9:24:3])
def test_malformed_field_through_groups_and_prune(good, tmp_path, field, how, dotted, value):
    path = write(tmp_path, changed(good["payload"], dotted, value))
    for argv in (["groups", path], ["prune", path, "--out", tmp_path / "out.fxp"]):
        code, out, err = run(argv)
        assert code == 2 and len(err.splitlines()) == 1 and f"'{field}" in err, err
    assert not (tmp_path / "out.fxp").exists()


def with_weights(payload: dict, state_dict: dict) -> dict:
    """``payload`` with other weights and their (valid) digest."""
    return {**payload, "state_dict": state_dict, "weights_sha256": weights_sha256(state_dict)}


def test_fields_that_do_not_fit_the_model_are_plan_errors(good, tmp_path):
    p = good["payload"]
    gid = first_group(p)
    extra = with_weights(p, {**p["state_dict"], "ghost.weight": torch.ones(3)})
    key = next(iter(p["state_dict"]))
    reshaped = with_weights(p, {**p["state_dict"], key: p["state_dict"][key].reshape(-1)})
    cases = {
        "plan": [changed(p, "plan", {gid: [0, 10 ** 6]}), changed(p, "plan", {"no_such_group": [0]})],
        "state_dict": [extra, reshaped, changed(p, "source.kwargs", {"in_channels": 1, "num_classes": 7})],
    }
    for field, payloads in cases.items():
        for payload in payloads:
            path = write(tmp_path, payload)
            with pytest.raises(fxprune.PlanError, match=f"field '{field}'"):
                fxprune.load(path)
            code, _, err = run(["validate", path])
            assert code == 2 and len(err.splitlines()) == 1 and f"'{field}'" in err, err


def test_source_or_shapes_that_do_not_fit_are_named_input_errors(good, tmp_path):
    p = good["payload"]
    path = write(tmp_path, changed(p, "input_shapes", [[1, 1, 20, 20]]))
    with pytest.raises(fxprune.InputError, match="field 'input_shapes'"):
        fxprune.load(path)
    path = write(tmp_path, changed(p, "source.kwargs", {"bogus": 1}))
    with pytest.raises(fxprune.InputError, match="field 'source.kwargs'"):
        fxprune.load(path)


def test_optional_fields_may_be_absent(good, tmp_path):
    for dotted in ("report", "onnx"):
        path = write(tmp_path, changed(good["payload"], dotted, DELETE))
        with torch.no_grad():
            assert torch.equal(fxprune.load(path)(good["x"]), good["y"])


# ----------------------------------------------------------------------------- versions


def test_future_format_version_is_refused(good, tmp_path):
    path = write(tmp_path, changed(good["payload"], "format_version", 999))
    with pytest.raises(fxprune.InputError, match="written by a newer fxprune .*'format_version' is 999"):
        fxprune.load(path)
    code, _, err = run(["validate", path])
    assert code == 2 and "newer fxprune" in err and len(err.splitlines()) == 1


def test_version_1_files_load_with_a_note(good, tmp_path):
    v1 = {k: v for k, v in good["payload"].items() if k not in ("weights_sha256", "onnx")}
    path = write(tmp_path, {**v1, "format_version": 1})
    with pytest.warns(UserWarning, match="without a weights digest"):
        gm = fxprune.load(path)
    with torch.no_grad():
        assert torch.equal(gm(good["x"]), good["y"])
    assert FORMAT_VERSION == 2 and good["payload"]["format_version"] == 2


# ----------------------------------------------------------------------------- damaged files


def damaged_files(good: dict, d: Path) -> dict[str, Path]:
    raw = good["path"].read_bytes()
    files = {
        "empty": b"",
        "truncated to 10 bytes": raw[:10],
        "truncated to half": raw[: len(raw) // 2],
        "truncated by one byte": raw[:-1],
        "random bytes": random.Random(0).randbytes(4096),
        "text": b"format: fxprune-pruned-model\n" * 20,
    }
    out = {}
    for name, data in files.items():
        out[name] = d / f"{name.replace(' ', '_')}.fxp"
        out[name].write_bytes(data)
    out["a zip that is not torch"] = d / "other.zip"
    with zipfile.ZipFile(out["a zip that is not torch"], "w") as archive:
        archive.writestr("data.txt", "hello")
    return out


DAMAGED = ["empty", "truncated to 10 bytes", "truncated to half", "truncated by one byte", "random bytes", "text",
           "a zip that is not torch"]


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_and_foreign_files_are_named_input_errors(good, tmp_path, case):
    path = damaged_files(good, tmp_path)[case]
    with pytest.raises(fxprune.InputError, match="empty|not a readable|not a file written by fxprune"):
        fxprune.load(path)
    for argv in (["validate", path], ["groups", path, "--model", "lenet5", "--in-channels", "1"]):
        code, out, err = run(argv)
        assert code == 2 and out == "" and len(err.splitlines()) == 1, err


def weights_offset(good: dict) -> int:
    """Where the largest weight tensor's bytes start in the saved file."""
    raw = good["path"].read_bytes()
    tensor = max(good["payload"]["state_dict"].values(), key=lambda t: t.numel())
    offset = raw.find(tensor.contiguous().numpy().tobytes()[:64])
    assert offset > 0
    return offset


def test_a_bit_flipped_weight_is_a_digest_mismatch(good, tmp_path):
    data = bytearray(good["path"].read_bytes())
    data[weights_offset(good) + 21] ^= 0x01
    path = tmp_path / "flipped.fxp"
    path.write_bytes(bytes(data))
    with pytest.raises(fxprune.InputError, match="digest mismatch: the file was modified or damaged"):
        fxprune.load(path)
    code, _, err = run(["validate", path])
    assert code == 2 and "digest mismatch" in err and len(err.splitlines()) == 1
    code, _, err = run(["groups", path])
    assert code == 2 and "digest mismatch" in err and len(err.splitlines()) == 1


def test_a_flip_anywhere_is_a_named_error_or_the_identical_model(good, tmp_path):
    raw = good["path"].read_bytes()
    rng = random.Random(12)
    pickle_region = range(0, 2200)  # data.pkl comes first in torch's zip
    positions = rng.sample(pickle_region, 28) + rng.sample(range(len(raw)), 20)
    outcomes = {"error": 0, "identical": 0}
    for pos in positions:
        data = bytearray(raw)
        data[pos] ^= 1 << rng.randrange(8)
        path = tmp_path / "flip.fxp"
        path.write_bytes(bytes(data))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gm = fxprune.load(path)
        except (fxprune.InputError, fxprune.PlanError):
            outcomes["error"] += 1
            continue
        with torch.no_grad():
            assert torch.equal(gm(good["x"]), good["y"]), pos
        state = gm.state_dict()
        assert state.keys() == good["state"].keys(), pos
        assert all(torch.equal(state[k], good["state"][k]) for k in state), pos
        outcomes["identical"] += 1
    assert outcomes["error"] > 0 and sum(outcomes.values()) == len(positions)


# ----------------------------------------------------------------------------- saving


def test_save_records_the_onnx_file_and_check_onnx_pair_uses_it(good, tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx bytes")
    fxprune.save(good["result"], tmp_path / "m.fxp", onnx_sha256=file_sha256(onnx), onnx_file=onnx)
    payload = fxprune.io.read(tmp_path / "m.fxp")
    assert payload["onnx"] == {"file": "model.onnx", "sha256": file_sha256(onnx)}
    assert check_onnx_pair(payload, onnx) is True
    onnx.write_bytes(b"another export")
    with pytest.raises(fxprune.InputError, match="was not written together with .*re-run prune"):
        check_onnx_pair(payload, onnx, "m.fxp")
    assert check_onnx_pair(good["payload"], onnx) is False  # nothing recorded: nothing to compare


def test_save_refuses_what_load_would_refuse(good, tmp_path):
    with pytest.raises(fxprune.InputError, match="pass both or neither"):
        fxprune.save(good["result"], tmp_path / "a.fxp", onnx_file="x.onnx")
    with pytest.raises(fxprune.InputError, match="field 'source.kwargs.in_channels'"):
        fxprune.save(good["result"], tmp_path / "a.fxp", model_name="lenet5", model_kwargs={"in_channels": 1.0j})
    with pytest.raises(fxprune.InputError, match="unknown model name 'os:system'"):
        fxprune.save(good["result"], tmp_path / "a.fxp", model_name="os:system")
    assert list(tmp_path.iterdir()) == []


def test_digest_covers_names_dtypes_shapes_and_bytes():
    base = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)}
    digest = weights_sha256(base)
    assert weights_sha256(dict(reversed(base.items()))) == digest  # sorted key order
    assert weights_sha256({**base, "a": base["a"].t().contiguous().t()}) == digest  # layout does not matter
    variants = [
        {"A": base["a"], "b": base["b"]},
        {**base, "a": base["a"].double()},
        {**base, "a": base["a"].reshape(3, 2)},
        {**base, "b": torch.tensor([0.0, 1e-30])},
    ]
    assert len({weights_sha256(v) for v in variants} | {digest}) == len(variants) + 1
