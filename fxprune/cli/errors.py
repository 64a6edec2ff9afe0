"""The CLI's two error kinds and the helpers that turn errors into one-line messages.

``CLIError`` is bad input (exit code 2), ``InternalError`` a failure fxprune should
have handled (exit code 1). Every message the CLI prints goes through ``one_line``:
ANSI colours stripped, whitespace (newlines included) collapsed.
"""
from __future__ import annotations

import re
import sys

PROG = "fxprune-trace"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class CLIError(Exception):
    """A problem with the command line or its input files: one line, exit code 2."""


class InternalError(Exception):
    """Something fxprune should have handled: one line, exit code 1."""


def one_line(text: object) -> str:
    """``text`` as one line: ANSI colours removed, runs of whitespace made one space."""
    return " ".join(ANSI.sub("", str(text)).split())


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line (just ``Type`` without a message)."""
    text = one_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def first_line(exc: BaseException) -> str:
    """``Type: first non-empty line`` of an exception's message."""
    lines = [ln for ln in ANSI.sub("", str(exc)).strip().splitlines() if ln.strip()]
    head = lines[0].strip() if lines else ""
    return f"{type(exc).__name__}: {head}" if head else type(exc).__name__


def short(exc: BaseException, limit: int = 160) -> str:
    """``first_line`` cut after its first sentence (torch's loader messages run on)."""
    text = first_line(exc)
    cut = text.find(". ")
    text = text[:cut + 1] if cut > 0 else text
    return text if len(text) <= limit else text[:limit - 3] + "..."


def warn(message: str) -> None:
    """Print ``fxprune-trace: warning: <message>`` on stderr."""
    print(f"{PROG}: warning: {one_line(message)}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    """Print ``fxprune-trace: error: <message>`` on stderr."""
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr, flush=True)
