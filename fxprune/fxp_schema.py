"""The schema of a ``.fxp`` payload: one small check per field, driven by a table.

``check_fields(payload)`` returns a normalised copy of a payload read with
``torch.load(weights_only=True)`` or raises ``FieldProblem`` naming the field
(``"plan"``, ``"source.kwargs"`` ...) and what is wrong with it; ``fxprune.io``
turns that into an ``InputError`` that names the file. Nothing here imports or
calls anything a file names. A field added in a later format version is
required only in files of that version (``Field.since``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

FORMAT = "fxprune-pruned-model"
FORMAT_VERSION = 2  # 2: weights_sha256 and onnx added

SOURCE_KINDS = ("fxprune.models", "torchvision.models", "timm", "class")
REGISTRY_KINDS = SOURCE_KINDS[:-1]
#: Constructor keywords a file may not pass to a registry builder: they fetch or read other files.
RESERVED_KWARG = re.compile(r"pretrained|weights|checkpoint|path|file|url|download|cache", re.IGNORECASE)

MAX_INPUTS, MAX_RANK, MAX_DIM, MAX_NUMEL = 16, 8, 1 << 24, 1 << 26
MAX_KWARGS_DEPTH, MAX_KWARGS_ITEMS, MAX_TEXT = 4, 1000, 1000
SHA256_HEX = re.compile(r"[0-9a-f]{64}")

MISSING = object()


class FieldProblem(Exception):
    """Field ``field`` of a payload is missing, of the wrong type or out of range."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field '{field}' {problem}")
        self.field = field
        self.problem = problem


class NewerFormat(FieldProblem):
    """The file's ``format_version`` is above the one this fxprune writes."""


@dataclass(frozen=True)
class Field:
    """One top-level field: its check (returns the normalised value), whether it may be
    absent, and the format version from which it is required."""

    name: str
    check: Callable[[Any], Any]
    required: bool = True
    since: int = 1


def type_name(value: Any) -> str:
    """How messages name a value's type."""
    return "nothing (None)" if value is None else type(value).__name__


def is_int(value: Any) -> bool:
    """A Python int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------- plain data


def check_plain_data(value: Any, field: str, depth: int = 0, budget: list[int] | None = None) -> Any:
    """``value`` if it is plain data (None, bool, int, finite float, str, lists and str-keyed
    dicts of them, nested at most ``MAX_KWARGS_DEPTH`` deep); raises ``FieldProblem`` otherwise."""
    budget = [MAX_KWARGS_ITEMS] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise FieldProblem(field, f"has more than {MAX_KWARGS_ITEMS} items")
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FieldProblem(field, f"holds the non-finite number {value}")
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise FieldProblem(field, f"holds a string of {len(value)} characters (at most {MAX_TEXT})")
        return value
    if depth >= MAX_KWARGS_DEPTH:
        raise FieldProblem(field, f"is nested more than {MAX_KWARGS_DEPTH} levels deep")
    if isinstance(value, (list, tuple)):
        return [check_plain_data(v, f"{field}[{i}]", depth + 1, budget) for i, v in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise FieldProblem(field, f"has a key of type {type_name(key)}; keys must be strings")
        return {k: check_plain_data(v, f"{field}.{k}", depth + 1, budget) for k, v in value.items()}
    raise FieldProblem(field, f"holds a {type_name(value)}; only None, bool, int, float, str and "
                              f"lists/dicts of them are allowed")


# ---------------------------------------------------------------------------- top-level fields


def check_format(value: Any) -> str:
    """Must be the fxprune format name."""
    if value != FORMAT:
        raise FieldProblem("format", f"is {value!r}, not {FORMAT!r}")
    return value


def check_format_version(value: Any) -> int:
    """An int from 1 to ``FORMAT_VERSION``; a higher one is ``NewerFormat``."""
    if not is_int(value):
        raise FieldProblem("format_version", f"must be an int, got {type_name(value)}")
    if value > FORMAT_VERSION:
        raise NewerFormat("format_version", f"is {value}: written by a newer fxprune (this one reads "
                                            f"format versions 1 to {FORMAT_VERSION})")
    if value < 1:
        raise FieldProblem("format_version", f"is {value}, out of range (1 to {FORMAT_VERSION})")
    return value


def check_fxprune_version(value: Any) -> str:
    """A non-empty version string."""
    if not isinstance(value, str):
        raise FieldProblem("fxprune_version", f"must be a string, got {type_name(value)}")
    if not 0 < len(value) <= 64:
        raise FieldProblem("fxprune_version", f"must be 1 to 64 characters, got {len(value)}")
    return value


def check_source_kind(value: Any) -> str:
    """One of ``SOURCE_KINDS``."""
    if not isinstance(value, str):
        raise FieldProblem("source.kind", f"must be a string, got {type_name(value)}")
    if value not in SOURCE_KINDS:
        raise FieldProblem("source.kind", f"is {value[:80]!r}, not one of {', '.join(SOURCE_KINDS)}")
    return value


def check_source_name(value: Any) -> str:
    """A non-empty name of at most 512 characters."""
    if not isinstance(value, str):
        raise FieldProblem("source.name", f"must be a string, got {type_name(value)}")
    if not 0 < len(value) <= 512:
        raise FieldProblem("source.name", f"must be 1 to 512 characters, got {len(value)}")
    return value


def check_source_kwargs(value: Any) -> dict[str, Any]:
    """A str-keyed dict of plain data."""
    if not isinstance(value, dict):
        raise FieldProblem("source.kwargs", f"must be a dict, got {type_name(value)}")
    return check_plain_data(value, "source.kwargs")


SOURCE_FIELDS: tuple[Field, ...] = (
    Field("kind", check_source_kind), Field("name", check_source_name), Field("kwargs", check_source_kwargs),
)


def check_source(value: Any) -> dict[str, Any]:
    """``{"kind", "name", "kwargs"}``; a class is named ``module:qualname``; a registry builder
    gets no keyword that would fetch or read other files."""
    if not isinstance(value, dict):
        raise FieldProblem("source", f"must be a dict, got {type_name(value)}")
    out = check_table(value, SOURCE_FIELDS, version=FORMAT_VERSION, prefix="source.")
    if out["kind"] == "class" and not re.fullmatch(r"[^:\s]+:[^:\s]+", out["name"]):
        raise FieldProblem("source.name", f"is {out['name'][:80]!r}; a class is named 'module:qualname'")
    if out["kind"] in REGISTRY_KINDS:
        reserved = [k for k in out["kwargs"] if RESERVED_KWARG.search(k)]
        if reserved:
            raise FieldProblem("source.kwargs", f"has {reserved[0]!r}: a file may not ask a model registry to "
                                                f"fetch or read weights or files")
    return out


def check_shape(value: Any, field: str) -> list[int]:
    """A list of 1 to ``MAX_RANK`` positive ints, each at most ``MAX_DIM``, with at most
    ``MAX_NUMEL`` elements in all."""
    if not isinstance(value, (list, tuple)) or not all(is_int(d) for d in value):
        raise FieldProblem(field, f"must be a list of ints, got {type_name(value)}")
    if not 0 < len(value) <= MAX_RANK:
        raise FieldProblem(field, f"has rank {len(value)}, out of range (1 to {MAX_RANK})")
    if not all(0 < d <= MAX_DIM for d in value):
        raise FieldProblem(field, f"is {list(value)}; every size must be 1 to {MAX_DIM}")
    if math.prod(value) > MAX_NUMEL:
        raise FieldProblem(field, f"is {list(value)}: more than {MAX_NUMEL} elements")
    return list(value)


def check_input_shapes(value: Any) -> list[list[int]]:
    """A non-empty list of at most ``MAX_INPUTS`` shapes (``check_shape``)."""
    if not isinstance(value, (list, tuple)):
        raise FieldProblem("input_shapes", f"must be a list of shapes, got {type_name(value)}")
    if not 0 < len(value) <= MAX_INPUTS:
        raise FieldProblem("input_shapes", f"has {len(value)} shapes, out of range (1 to {MAX_INPUTS})")
    return [check_shape(s, f"input_shapes[{i}]") for i, s in enumerate(value)]


def check_plan_units(gid: str, value: Any) -> list[int]:
    """Distinct non-negative ints."""
    field = f"plan[{gid[:80]}]"
    if not isinstance(value, (list, tuple)) or not all(is_int(u) for u in value):
        raise FieldProblem(field, f"must be a list of unit indices (ints), got {type_name(value)}")
    if any(u < 0 for u in value):
        raise FieldProblem(field, f"has negative unit indices {[u for u in value if u < 0][:5]}")
    if len(set(value)) != len(value):
        raise FieldProblem(field, "has duplicate unit indices")
    return list(value)


def check_plan(value: Any) -> dict[str, list[int]]:
    """A dict of non-empty group name -> distinct non-negative unit indices."""
    if not isinstance(value, dict):
        raise FieldProblem("plan", f"must be a dict of group name -> kept units, got {type_name(value)}")
    for gid in value:
        if not isinstance(gid, str) or not gid:
            raise FieldProblem("plan", f"has the key {gid!r}; group names are non-empty strings")
    return {gid: check_plan_units(gid, kept) for gid, kept in value.items()}


def check_state_dict(value: Any) -> dict[str, torch.Tensor]:
    """A dict of non-empty str -> dense CPU-loadable tensor."""
    if not isinstance(value, dict):
        raise FieldProblem("state_dict", f"must be a dict of name -> tensor, got {type_name(value)}")
    for key, tensor in value.items():
        if not isinstance(key, str) or not key:
            raise FieldProblem("state_dict", f"has the key {key!r}; parameter names are non-empty strings")
        if not isinstance(tensor, torch.Tensor):
            raise FieldProblem(f"state_dict[{key[:80]}]", f"must be a tensor, got {type_name(tensor)}")
        if tensor.layout != torch.strided or tensor.is_meta or tensor.is_quantized:
            raise FieldProblem(f"state_dict[{key[:80]}]", f"is a {tensor.layout} tensor{' on meta' * tensor.is_meta}"
                                                            f"; only dense tensors are stored")
    return dict(value)


def check_report(value: Any) -> dict[str, Any] | None:
    """A str-keyed dict (or None) whose ``params_after``, if present, is a non-negative int."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise FieldProblem("report", f"must be a dict with string keys, got {type_name(value)}")
    params = value.get("params_after", 0)
    if not is_int(params):
        raise FieldProblem("report.params_after", f"must be an int, got {type_name(params)}")
    if params < 0:
        raise FieldProblem("report.params_after", f"is {params}, out of range (>= 0)")
    return value


def check_bool(value: Any, field: str) -> bool:
    """True or False (the rewrite's ``compensate``; absent in files written before it existed)."""
    if not isinstance(value, bool):
        raise FieldProblem(field, f"must be true or false, got {type_name(value)}")
    return value


CAPTURES = ("fx", "export")


def check_capture(value: Any) -> str:
    """The front end that captured the model (``"fx"`` or ``"export"``; absent in older files: fx)."""
    if value not in CAPTURES:
        raise FieldProblem("capture", f"must be one of {', '.join(map(repr, CAPTURES))}, got {value!r:.40}")
    return value


def check_sha256(value: Any, field: str = "weights_sha256") -> str:
    """64 lower-case hex digits."""
    if not isinstance(value, str):
        raise FieldProblem(field, f"must be a hex string, got {type_name(value)}")
    if not SHA256_HEX.fullmatch(value):
        raise FieldProblem(field, f"is {value[:80]!r}, not a sha256 digest (64 lower-case hex digits)")
    return value


def check_onnx(value: Any) -> dict[str, str] | None:
    """None, or ``{"file": basename, "sha256": hex}`` of the ONNX file written with this one."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FieldProblem("onnx", f"must be None or a dict, got {type_name(value)}")
    name = value.get("file", MISSING)
    if not isinstance(name, str):
        raise FieldProblem("onnx.file", "is missing" if name is MISSING else f"must be a string, got {type_name(name)}")
    if not 0 < len(name) <= 255 or name in (".", "..") or re.search(r"[/\\\x00]", name):
        raise FieldProblem("onnx.file", f"is {name[:80]!r}, not a file name (a basename, no directories)")
    if "sha256" not in value:
        raise FieldProblem("onnx.sha256", "is missing")
    return {"file": name, "sha256": check_sha256(value["sha256"], "onnx.sha256")}


FIELDS: tuple[Field, ...] = (
    Field("format", check_format),
    Field("format_version", check_format_version),
    Field("fxprune_version", check_fxprune_version),
    Field("source", check_source),
    Field("input_shapes", check_input_shapes),
    Field("plan", check_plan),
    Field("state_dict", check_state_dict),
    Field("report", check_report, required=False),
    Field("weights_sha256", check_sha256, since=2),
    Field("onnx", check_onnx, required=False, since=2),
    Field("compensate", lambda value: check_bool(value, "compensate"), required=False),
    Field("capture", check_capture, required=False),
)


# ---------------------------------------------------------------------------- driving the table


def check_table(value: dict, fields: tuple[Field, ...], version: int, prefix: str = "") -> dict[str, Any]:
    """Run each field's check in order; a required field (from its version on) must be present.
    Keys not in the table are kept as they are."""
    out = dict(value)
    for spec in fields:
        item = value.get(spec.name, MISSING)
        if item is MISSING:
            if spec.required and version >= spec.since:
                raise FieldProblem(prefix + spec.name, "is missing")
            continue
        out[spec.name] = spec.check(item)
    return out


def check_fields(payload: Any) -> dict[str, Any]:
    """A normalised copy of ``payload``; raises ``FieldProblem`` (``NewerFormat`` for a file of a
    later format version) naming the first field that is missing, mistyped or out of range."""
    if not isinstance(payload, dict):
        raise FieldProblem("format", f"is missing: the file holds a {type_name(payload)}, not fxprune's dict")
    for spec in FIELDS[:2]:  # format, then format_version: what decides how to read the rest
        if spec.name not in payload:
            raise FieldProblem(spec.name, "is missing")
        spec.check(payload[spec.name])
    return check_table(payload, FIELDS, payload["format_version"])
