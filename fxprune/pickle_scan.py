"""Recognising a pickled file, and the globals it refers to, without unpickling it.

``torch.load(weights_only=True)`` refuses both a damaged file and a file of pickled
Python objects with the same ``UnpicklingError``; ``pickle_globals`` tells them apart
by reading the pickle opcodes (``pickletools.genops``, which executes nothing).
"""
from __future__ import annotations

import io
import os
import pickletools
import zipfile
from typing import IO

MAX_PICKLES = 8  # a legacy torch.save file is a few pickles followed by raw storage bytes


def _python3_name(name: str) -> str:
    """Protocol-2 pickles name builtins ``__builtin__.x``; say ``builtins.x``."""
    return "builtins." + name[len("__builtin__."):] if name.startswith("__builtin__.") else name


def _scan_one(stream: IO[bytes]) -> list[str]:
    """The globals of the next pickle in ``stream``; raises if it is not a whole pickle."""
    names: list[str] = []
    strings: list[str] = []
    for opcode, arg, _ in pickletools.genops(stream):
        if opcode.name in ("GLOBAL", "INST"):
            names.append(_python3_name(str(arg).replace(" ", ".")))
        elif opcode.name == "STACK_GLOBAL":
            names.append(_python3_name(".".join(strings[-2:])) if len(strings) >= 2 else "?")
        elif isinstance(arg, str):
            strings.append(arg)
        if opcode.name == "STOP":
            return names
    raise ValueError("pickle without STOP")


def _scan(stream: IO[bytes]) -> list[str] | None:
    """Globals of the pickles at the start of ``stream``; None if not even one pickle parses."""
    names: list[str] = []
    parsed = 0
    for _ in range(MAX_PICKLES):
        try:
            names += _scan_one(stream)
        except Exception:  # noqa: BLE001 - the end of the pickles (or not a pickle at all)
            break
        parsed += 1
    return list(dict.fromkeys(names)) if parsed else None


def pickle_globals(path: str | os.PathLike) -> list[str] | None:
    """The classes/functions a pickled file (a torch zip or legacy file, or a raw pickle) refers
    to, read without unpickling; None when the file is not a pickle (damaged or another format)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                return _scan(io.BytesIO(archive.read(data[0]))) if data else None
        with open(path, "rb") as stream:
            return _scan(stream)
    except Exception:  # noqa: BLE001 - unreadable: not a pickle we can describe
        return None


_PLUMBING = ("torch._utils._rebuild", "torch._tensor._rebuild", "collections.OrderedDict", "builtins.set",
             "torch.nn.parameter.Parameter", "torch.Size")


def shown_globals(names: list[str], limit: int = 3) -> str:
    """`` (a.B, c.d, ...)`` for messages: the globals that are not torch's storage plumbing first."""
    interesting = [n for n in names if not n.startswith(_PLUMBING) and not n.endswith("Storage")] or names
    if not interesting:
        return ""
    return f" ({', '.join(interesting[:limit])}{', ...' if len(interesting) > limit else ''})"
