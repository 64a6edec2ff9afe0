"""Running ``fxprune-trace`` in-process for tests: one helper for every CLI test file."""
from __future__ import annotations

import contextlib
import io

from fxprune import cli


def run(argv: list) -> tuple[int, str, str]:
    """``cli.main(argv)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()
