"""Writing files all-or-nothing: the one atomic write of fxprune (library, CLI and tools).

``atomic_write(path, write)`` calls ``write(tmp)`` on a hidden temporary file
``.NAME.XXXXXXXX.tmp`` in the target directory, flushes it to disk and moves it into
place with ``os.replace`` only once ``write`` returned, so ``path`` holds either its
old content or the complete new one. ``atomic_write_all(paths, write)`` does the same
for files that belong together: every file is written before any is published, then
they are published in the order given.

What is guaranteed:

- Refused before anything is written, with an ``InputError``: a target that exists
  and is not a regular file (a device node such as /dev/null, a FIFO, a socket, a
  directory, or a symlink to one of those), a missing directory, the same file named
  twice. A symlink to a regular file is written through (its target is replaced), as
  ``open(path, "w")`` would. ``check_output_path`` also refuses an output that is one
  of the inputs (the same file, hard links and symlinks included).
- An ``OSError`` while writing or publishing (disk full, quota, permissions) becomes an
  ``OutputError`` naming the file; the temporary files are removed. So does any other
  exception of ``write`` when the file system is then full (``torch.save`` to a path
  reports ENOSPC as a ``RuntimeError``).
- SIGTERM, SIGINT and SIGHUP while a write is pending: the temporary files are removed
  before the signal has its usual effect (the previous Python handler runs, e.g.
  ``KeyboardInterrupt``, and the writer's cleanup follows; or the process dies of the
  signal as it would have). While files are being moved into place these signals are
  held back until every file of the set is published, so they never leave a set half
  published. The handlers are installed from the main thread only while a write is
  pending, and the previous ones are restored afterwards.
- SIGKILL cannot be caught: it may leave a hidden ``.NAME.*.tmp`` file, never a partly
  written file under the final name. Between two renames of ``atomic_write_all`` it can
  leave the first file new and the second old; that is why ``fxprune-trace prune``
  publishes the ``.fxp`` (which records the digest of its ONNX file) before the ``.onnx``.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from .errors import FxpruneError, InputError, OutputError

__all__ = ["OutputError", "atomic_write", "atomic_write_all", "check_output_path", "default_file_mode"]

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


# --------------------------------------------------------------------------- signals


class _Guard:
    """The pending temporary files of this process and the signal handlers that remove them."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.temps: set[str] = set()
        self.writers = 0
        self.previous: dict[int, Any] = {}
        self.holding = 0
        self.held: list[int] = []

    def enter(self) -> None:
        """A write starts: install the handlers if it is the first pending one."""
        with self.lock:
            self.writers += 1
            if self.writers == 1:
                self._install()

    def leave(self) -> None:
        """A write ended: restore the previous handlers once none is pending."""
        with self.lock:
            self.writers -= 1
            if self.writers == 0:
                self._restore()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold SIGTERM/SIGINT/SIGHUP back while the block runs; act on them afterwards. (Main
        thread only: Python runs signal handlers there, so only there can it act on them.)"""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
            if self.holding == 0 and self.held:
                signals, self.held = list(dict.fromkeys(self.held)), []
                for signum in signals:
                    self._forward(signum, None)

    def remove_temps(self) -> None:
        """Delete every pending temporary file (best effort)."""
        for tmp in list(self.temps):
            with contextlib.suppress(OSError):
                os.remove(tmp)
            self.temps.discard(tmp)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal.signal works in the main thread only; the writer's finally still cleans up
        for signum in _SIGNALS:
            previous = signal.getsignal(signum)
            if signum in self.previous or previous is None:  # ours already, or set outside Python
                continue
            self.previous[signum] = previous
            signal.signal(signum, self._on_signal)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in list(self.previous.items()):
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous)
            del self.previous[signum]

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.holding:
            self.held.append(signum)
            return
        self._forward(signum, frame)

    def _forward(self, signum: int, frame: Any) -> None:
        """Give the signal its usual effect, removing the temporary files first where that ends the process."""
        previous = self.previous.get(signum, signal.SIG_DFL)
        if callable(previous):  # e.g. KeyboardInterrupt: the writers' finally blocks clean up
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        self.remove_temps()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # pragma: no cover - only if the signal did not end the process


_GUARD = _Guard()


# --------------------------------------------------------------------------- checks


def check_output_path(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """``path`` checked as an output file before any work: its directory exists, it is not an
    existing non-regular file (or a symlink to one) and not the same file as any of ``inputs``.

    Returns the path that will be written (a symlink's target); raises ``InputError`` otherwise.
    """
    target = _writable_target(Path(path))
    for source in inputs:
        if _same_file(target, Path(source)):
            raise InputError(f"{path} is the input file {source} (the same file); writing it would replace "
                             f"the input: choose another output path")
    return target


def _writable_target(path: Path) -> Path:
    """The file to replace for ``path`` (symlinks followed), refusing non-regular files."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise InputError(f"cannot inspect output {path}: {exc.strerror or exc}; choose another path") from None
    if mode is not None and not stat.S_ISREG(mode):
        via = f" (a symlink to {target})" if target != path else ""
        raise InputError(f"output {path}{via} exists and is {_kind(mode)}, not a regular file; "
                         f"pass the path of a regular file")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output directory {str(parent)!r} does not exist")
    return target


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file (hard links and symlinks included); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# --------------------------------------------------------------------------- writing


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` then move the file to ``path``; nothing is left behind on failure
    (see the module doc for what is refused and how signals are handled)."""
    atomic_write_all([path], lambda temps: write(temps[0]))


def atomic_write_all(paths: Sequence[str | os.PathLike], write: Callable[[list[str]], Any]) -> None:
    """Call ``write(temps)`` with one temporary path per target, then publish every file in the
    order of ``paths``; if anything fails before, none is published and no temporary file is left.

    ``InputError`` for a target that cannot be written (see the module doc), ``OutputError`` for
    an ``OSError`` while writing or publishing; other exceptions of ``write`` propagate.
    """
    targets = [_writable_target(Path(p)) for p in paths]
    _check_distinct(targets, paths)
    temps: list[str] = []
    _GUARD.enter()
    try:
        _new_temps(targets, temps)
        write(list(temps))
        for tmp, target in zip(temps, targets):
            _seal(tmp, target)
        with _GUARD.hold():
            for tmp, target in zip(temps, targets):
                os.replace(tmp, target)
                _GUARD.temps.discard(tmp)
        _sync_dirs(targets)
    except OutputError as exc:  # from a nested atomic write into one of our temporary files
        raise _renamed(exc, temps, paths) from exc.__cause__
    except OSError as exc:
        if isinstance(exc, FxpruneError):
            raise
        raise _output_error(exc, temps, targets, paths) from exc
    except Exception as exc:  # torch.save(path) reports a full disk as a RuntimeError
        if isinstance(exc, FxpruneError) or not _disk_full(targets):
            raise
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise _output_error(full, temps, targets, paths) from exc
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.remove(tmp)  # already moved into place: the name no longer exists
            _GUARD.temps.discard(tmp)
        _GUARD.leave()


def _check_distinct(targets: list[Path], paths: Sequence[str | os.PathLike]) -> None:
    """Two paths of one write must not name the same file."""
    for i, a in enumerate(targets):
        for j in range(i):
            if os.path.abspath(a) == os.path.abspath(targets[j]) or _same_file(a, targets[j]):
                raise InputError(f"{paths[j]} and {paths[i]} are the same file; pass two different paths")


def _new_temps(targets: list[Path], temps: list[str]) -> None:
    """Append to ``temps`` an empty hidden temporary file beside each target, registered for removal
    on signals (a signal is held back until both lists know the file)."""
    with _GUARD.hold():
        for target in targets:
            fd, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".",
                                       prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            temps.append(tmp)
            _GUARD.temps.add(tmp)


def _seal(tmp: str, target: Path) -> None:
    """Give ``tmp`` the target's permissions (or the usual ones for a new file) and flush it to disk."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = default_file_mode()
    os.chmod(tmp, mode)  # mkstemp makes 0600
    fd = os.open(tmp, os.O_RDWR)
    try:
        os.fsync(fd)  # a delayed-allocation ENOSPC shows here, not after the rename
    finally:
        os.close(fd)


def _sync_dirs(targets: list[Path]) -> None:
    """Flush the directory entries of the renames (best effort: not every platform allows it)."""
    for folder in {str(t.parent) or "." for t in targets}:
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _output_error(exc: OSError, temps: list[str], targets: list[Path],
                  paths: Sequence[str | os.PathLike]) -> OutputError:
    """``exc`` as an ``OutputError`` naming the file (as the caller named it) being written."""
    names = {tmp: str(p) for tmp, p in zip(temps, paths)}
    names.update({str(t): str(p) for t, p in zip(targets, paths)})
    name = names.get(str(exc.filename), " and ".join(str(p) for p in paths))
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        fix = "free some space (or raise the quota) or write to another directory"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "check the permissions of the directory or write to another one"
    else:
        fix = "check the path and the disk"
    reason = exc.strerror or str(exc) or type(exc).__name__
    return OutputError(f"cannot write {name}: {reason}; nothing was written: {fix}", code, name)


def _disk_full(targets: list[Path], slack: int = 64 * 1024) -> bool:
    """Whether a target's file system has (almost) no space left for this process (checked after
    a failed write, while its temporary files still hold their partial data)."""
    if not hasattr(os, "statvfs"):
        return False
    root = getattr(os, "geteuid", lambda: -1)() == 0
    for folder in {str(t.parent) or "." for t in targets}:
        with contextlib.suppress(OSError):
            st = os.statvfs(folder)
            if (st.f_bfree if root else st.f_bavail) * st.f_frsize < slack:
                return True
    return False


def _renamed(exc: OutputError, temps: list[str], paths: Sequence[str | os.PathLike]) -> OutputError:
    """``exc`` naming the final path where it names one of our temporary files (or a file inside it)."""
    name = str(exc.filename or "")
    for tmp, path in zip(temps, paths):
        if name == tmp or name.startswith(os.path.join(os.path.dirname(tmp), f".{os.path.basename(tmp)}.")):
            return OutputError(str(exc).replace(name, str(path)), exc.errno, str(path))
    return exc


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give under the current umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where the platform allows (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0)
    os.umask(umask)
    return umask
