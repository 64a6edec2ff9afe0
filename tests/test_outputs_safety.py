"""Outputs that lose nothing (fxprune.atomic, fxprune-trace prune/validate).

Refused output paths (the input itself, device nodes, FIFOs, sockets, directories, symlinks to
them), temporary files on errors and on SIGTERM/SIGINT/SIGKILL (subprocesses killed while a
write is held open by a test hook), the .fxp/.onnx pair, disk full and quota exceeded.

The signal trials run ``fxprune/atomic.py`` in a child that does not import torch (a bare
``fxprune`` package object), so each takes a fraction of a second; one trial runs the whole CLI.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fxprune
import fxprune.atomic
import fxprune.models as zoo
from fxprune.atomic import OutputError, atomic_write, atomic_write_all, check_output_path
from fxprune.errors import InputError

from cli_run import run

PACKAGE_DIR = Path(fxprune.atomic.__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

pytestmark = pytest.mark.usefixtures("one_thread")


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def hidden_temps(folder: Path) -> list[str]:
    return [n for n in listing(folder) if n.startswith(".") and n.endswith(".tmp")]


@pytest.fixture
def specials(tmp_path: Path) -> dict[str, Path]:
    """Non-regular files to write to: a FIFO, a socket, a directory, a symlink to the FIFO and,
    as root, a character device node like /dev/null (the real one is never touched)."""
    paths = {"fifo": tmp_path / "fifo", "directory": tmp_path / "dir", "socket": tmp_path / "sock",
             "symlink to a FIFO": tmp_path / "link"}
    os.mkfifo(paths["fifo"])
    paths["directory"].mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(paths["socket"]))
    sock.close()
    paths["symlink to a FIFO"].symlink_to(paths["fifo"])
    with contextlib.suppress(OSError):  # needs root (CAP_MKNOD)
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        paths["device node"] = tmp_path / "null"
    return paths


def kinds(paths: dict[str, Path]) -> dict[str, int]:
    """The file type bits of each path (not following symlinks)."""
    return {name: stat.S_IFMT(os.lstat(p).st_mode) for name, p in paths.items()}


# ----------------------------------------------------------------------------- refused outputs


def test_non_regular_outputs_are_refused_and_left_alone(specials, tmp_path):
    before = kinds(specials)
    for name, path in specials.items():
        with pytest.raises(InputError, match="not a regular file") as info:
            check_output_path(path)
        assert str(path) in str(info.value), name
        with pytest.raises(InputError, match="not a regular file"):
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(b"data"))
    assert kinds(specials) == before  # nothing replaced by a regular file
    assert hidden_temps(tmp_path) == []


def test_output_that_is_the_input_is_refused_whatever_the_path(tmp_path):
    source = tmp_path / "model.pt"
    source.write_bytes(b"weights")
    os.link(source, tmp_path / "hard.pt")
    (tmp_path / "soft.pt").symlink_to(source)
    for out in (source, tmp_path / "hard.pt", tmp_path / "soft.pt", tmp_path / "." / "model.pt"):
        with pytest.raises(InputError, match="is the input file"):
            check_output_path(out, inputs=[source])
    assert check_output_path(tmp_path / "other.pt", inputs=[source]) == tmp_path / "other.pt"


def test_a_symlink_to_a_regular_file_is_written_through(tmp_path):
    target, link = tmp_path / "real.fxp", tmp_path / "link.fxp"
    target.write_bytes(b"old")
    target.chmod(0o640)
    link.symlink_to(target)
    atomic_write(link, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the replaced file's permissions are kept
    assert listing(tmp_path) == ["link.fxp", "real.fxp"]


def test_two_paths_of_one_write_must_differ(tmp_path):
    with pytest.raises(InputError, match="same file"):
        atomic_write_all([tmp_path / "a", tmp_path / "." / "a"], lambda temps: None)


@pytest.fixture(scope="module")
def lenet_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    torch.save(zoo.get("lenet5", in_channels=1).state_dict(), folder / "lenet.pt")
    return folder / "lenet.pt"


def prune_argv(checkpoint: Path, out: Path, *extra) -> list:
    return ["prune", checkpoint, "--model", "lenet5", "--in-channels", "1", "--out", out,
            "--latency-runs", "0", *extra]


def test_cli_refuses_the_checkpoint_as_output_and_special_files(lenet_checkpoint, specials, tmp_path):
    content = lenet_checkpoint.read_bytes()
    (tmp_path / "ckpt-link.pt").symlink_to(lenet_checkpoint)
    cases = {
        "--out is the checkpoint": prune_argv(lenet_checkpoint, lenet_checkpoint),
        "--onnx is a symlink to the checkpoint": [*prune_argv(lenet_checkpoint, tmp_path / "x.fxp"),
                                                  "--onnx", tmp_path / "ckpt-link.pt"],
        **{f"--out is a {name}": prune_argv(lenet_checkpoint, path) for name, path in specials.items()},
        "--onnx is a FIFO": [*prune_argv(lenet_checkpoint, tmp_path / "x.fxp"), "--onnx", specials["fifo"]],
    }
    before = kinds(specials)
    for case, argv in cases.items():
        code, out, err = run(argv)
        assert code == 2 and out == "", (case, err)
        assert err.startswith("fxprune-trace: error: ") and err.count("\n") == 1 and "; " in err, (case, err)
        assert ("is the input file" in err) if "checkpoint" in case else ("not a regular file" in err), (case, err)
    assert lenet_checkpoint.read_bytes() == content
    assert kinds(specials) == before
    assert not (tmp_path / "x.fxp").exists() and hidden_temps(tmp_path) == []


# ----------------------------------------------------------------------------- errors while writing


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_is_an_output_error_and_leaves_nothing(tmp_path, code):
    (tmp_path / "a.bin").write_bytes(b"old a")

    def fill_then_fail(temps):
        Path(temps[0]).write_bytes(b"partial")
        raise OSError(code, os.strerror(code), temps[1])

    with pytest.raises(OutputError) as info:
        atomic_write_all([tmp_path / "a.bin", tmp_path / "b.bin"], fill_then_fail)
    err = info.value
    assert err.errno == code and isinstance(err, OSError) and isinstance(err, fxprune.FxpruneError)
    assert err.filename == str(tmp_path / "b.bin") and os.strerror(code) in str(err)
    assert "free some space" in str(err) and "nothing was written" in str(err)
    assert listing(tmp_path) == ["a.bin"] and (tmp_path / "a.bin").read_bytes() == b"old a"


def test_torch_save_reporting_a_full_disk_as_runtime_error_is_still_disk_full(tmp_path, monkeypatch):
    """torch.save(obj, path) says "unexpected pos ..." (a RuntimeError) when the disk fills up."""
    def fail(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 6016 vs 5936")

    with pytest.raises(RuntimeError, match="unexpected pos"):  # a disk with space: not a disk problem
        atomic_write(tmp_path / "x.fxp", fail)
    full = os.statvfs(tmp_path)
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((*full[:3], 0, 0, *full[5:])))
    with pytest.raises(OutputError, match="No space left on device") as info:
        atomic_write(tmp_path / "x.fxp", fail)
    assert info.value.errno == errno.ENOSPC and listing(tmp_path) == []


def test_any_exception_while_writing_publishes_nothing(tmp_path):
    with pytest.raises(ZeroDivisionError):
        atomic_write(tmp_path / "x.bin", lambda tmp: (Path(tmp).write_bytes(b"half"), 1 / 0))
    assert listing(tmp_path) == []


@pytest.fixture(scope="module")
def old_pair(lenet_checkpoint, tmp_path_factory) -> dict[str, bytes]:
    """The bytes of a complete x.fxp/x.onnx pair written by ``prune`` (restored before each use)."""
    folder = tmp_path_factory.mktemp("pair")
    code, _, err = run([*prune_argv(lenet_checkpoint, folder / "x.fxp"), "--onnx", folder / "x.onnx"])
    assert code == 0, err
    return {name: (folder / name).read_bytes() for name in ("x.fxp", "x.onnx")}


def put(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).write_bytes(data)


@pytest.mark.parametrize("target", ["x.fxp", "x.onnx"])
def test_cli_disk_full_is_one_line_exit_2_and_keeps_the_old_pair(lenet_checkpoint, old_pair, tmp_path,
                                                                monkeypatch, target):
    put(tmp_path, old_pair)
    real_save, real_write = torch.save, Path.write_bytes
    if target == "x.fxp":  # torch.save of the .fxp (inside fxprune.save) hits a full disk
        def full(obj, f, *args, **kwargs):
            if ".x.fxp." not in str(f):
                return real_save(obj, f, *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        monkeypatch.setattr(torch, "save", full)
    else:  # the ONNX bytes exceed the quota
        def full(self, data):
            if not self.name.startswith(".x.onnx."):
                return real_write(self, data)
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(self))
        monkeypatch.setattr(Path, "write_bytes", full)
    code, out, err = run([*prune_argv(lenet_checkpoint, tmp_path / "x.fxp", "--sparsity", "0.3"),
                          "--onnx", tmp_path / "x.onnx"])
    reason = os.strerror(errno.ENOSPC if target == "x.fxp" else errno.EDQUOT)
    assert code == 2 and err.count("\n") == 1 and reason in err and "Traceback" not in err, err
    assert err.startswith(f"fxprune-trace: error: cannot write {tmp_path / target}: ") and "free some space" in err
    assert listing(tmp_path) == ["x.fxp", "x.onnx"]  # no temporary file left
    assert {n: (tmp_path / n).read_bytes() for n in old_pair} == old_pair


# ----------------------------------------------------------------------------- the .fxp/.onnx pair


def test_validate_names_a_pair_not_written_together(lenet_checkpoint, old_pair, tmp_path, monkeypatch):
    """A crash between the two renames (simulated: the ONNX rename fails) leaves the new .fxp
    beside the old .onnx; validate says so before comparing anything."""
    put(tmp_path, old_pair)
    real_replace = os.replace

    def crash_before_onnx(src, dst, *args, **kwargs):
        if str(dst).endswith("x.onnx"):
            raise KeyboardInterrupt  # stands for SIGKILL: nothing after this point runs
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", crash_before_onnx)
    code, _, err = run([*prune_argv(lenet_checkpoint, tmp_path / "x.fxp", "--sparsity", "0.3"),
                        "--onnx", tmp_path / "x.onnx"])
    monkeypatch.undo()
    assert code == 130 and "interrupted" in err
    assert (tmp_path / "x.fxp").read_bytes() != old_pair["x.fxp"]  # published first, by design
    assert (tmp_path / "x.onnx").read_bytes() == old_pair["x.onnx"]
    assert listing(tmp_path) == ["x.fxp", "x.onnx"]
    code, out, err = run(["validate", tmp_path / "x.fxp", "--onnx", tmp_path / "x.onnx"])
    assert code == 2 and "not written together" in err and "re-run prune" in err and err.count("\n") == 1, err
    assert "reloaded" not in out  # refused before any comparison


def test_validate_accepts_the_pair_written_together(old_pair, tmp_path):
    put(tmp_path, old_pair)
    code, out, err = run(["validate", tmp_path / "x.fxp", "--onnx", tmp_path / "x.onnx"])
    assert code == 0, err
    assert "x.onnx vs reloaded model: ok" in out and "(batch 1, 2)" in out


# ----------------------------------------------------------------------------- signals


CHILD = """
import os, signal, sys, time, types
package = types.ModuleType("fxprune")  # fxprune.atomic without importing torch
package.__path__ = [{package!r}]
sys.modules["fxprune"] = package
import fxprune.atomic as atomic

folder = {folder!r}
targets = [os.path.join(folder, "a.bin"), os.path.join(folder, "b.bin")]
"""

SLOW_WRITE = """
def write(temps):  # test hook: half of each file written, then held open until a signal comes
    for tmp in temps:
        with open(tmp, "wb") as f:
            f.write(b"new, half")
    print("WRITING", flush=True)
    time.sleep(60)

try:
    atomic.atomic_write_all(targets, write)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    sys.exit(130)
print("DONE", flush=True)
"""

SLOW_PUBLISH = """
real_replace = os.replace

def replace(src, dst):  # test hook: a.bin is in place, b.bin not yet; wait for a signal
    real_replace(src, dst)
    if str(dst).endswith("a.bin"):
        print("PUBLISHING", flush=True)
        deadline = time.monotonic() + 60
        while not atomic._GUARD.held and time.monotonic() < deadline:  # SIGTERM/SIGINT are held back
            time.sleep(0.01)

os.replace = replace

def write(temps):
    for tmp in temps:
        with open(tmp, "wb") as f:
            f.write(b"new")

atomic.atomic_write_all(targets, write)
print("DONE", flush=True)
time.sleep(60)
"""


def kill_at(folder: Path, body: str, marker: str, signum: int) -> tuple[int, str]:
    """Run the child, send ``signum`` once it prints ``marker``; (return code, its stdout)."""
    for name in ("a.bin", "b.bin"):
        (folder / name).write_bytes(b"old")
    script = CHILD.format(package=str(PACKAGE_DIR), folder=str(folder)) + textwrap.dedent(body)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        line = proc.stdout.readline()
        if line.strip() != marker:
            proc.wait(timeout=60)
            pytest.fail(f"the child did not reach {marker}: {line!r} {proc.stderr.read()}")
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, line + out


def contents(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in ("a.bin", "b.bin")}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_during_a_write_remove_the_temporary_files(tmp_path, signum):
    code, out = kill_at(tmp_path, SLOW_WRITE, "WRITING", signum)
    if signum == signal.SIGTERM:
        assert code == -signal.SIGTERM  # the usual death by SIGTERM, after the cleanup
    else:
        assert code == 130 and "INTERRUPTED" in out  # KeyboardInterrupt, the writer's cleanup ran
    assert listing(tmp_path) == ["a.bin", "b.bin"]
    assert contents(tmp_path) == {"a.bin": b"old", "b.bin": b"old"}


def test_sigkill_during_a_write_leaves_at_most_hidden_temporary_files(tmp_path):
    code, _ = kill_at(tmp_path, SLOW_WRITE, "WRITING", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert contents(tmp_path) == {"a.bin": b"old", "b.bin": b"old"}  # no half file under a real name
    leftovers = sorted(set(listing(tmp_path)) - {"a.bin", "b.bin"})
    assert leftovers and all(n.startswith((".a.bin.", ".b.bin.")) and n.endswith(".tmp") for n in leftovers)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_publishing_waits_until_the_whole_set_is_published(tmp_path, signum):
    code, out = kill_at(tmp_path, SLOW_PUBLISH, "PUBLISHING", signum)
    assert contents(tmp_path) == {"a.bin": b"new", "b.bin": b"new"}  # never half published
    assert listing(tmp_path) == ["a.bin", "b.bin"]
    assert "DONE" not in out  # the signal took effect right after publishing, not later
    assert code == -signum  # SIGTERM: its usual death; SIGINT: an uncaught KeyboardInterrupt ends by SIGINT


def test_sigkill_while_publishing_leaves_the_first_new_and_a_hidden_temporary(tmp_path):
    """What the .fxp's record of its ONNX digest is for (see the CLI pair test)."""
    code, _ = kill_at(tmp_path, SLOW_PUBLISH, "PUBLISHING", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert contents(tmp_path) == {"a.bin": b"new", "b.bin": b"old"}
    assert [n for n in listing(tmp_path) if n not in ("a.bin", "b.bin")][0].startswith(".b.bin.")


def test_handlers_are_installed_while_writing_and_restored_after(tmp_path):
    def mine(signum, frame):
        raise AssertionError("not expected")

    previous = signal.signal(signal.SIGTERM, mine)
    sigint = signal.getsignal(signal.SIGINT)
    during = []
    try:
        atomic_write(tmp_path / "x", lambda tmp: during.append(signal.getsignal(signal.SIGTERM)))
        assert during and during[0] is not mine  # fxprune.atomic's handler while the write was pending
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is sigint
    finally:
        signal.signal(signal.SIGTERM, previous)


CLI_CHILD = """
import sys, time, torch
from fxprune import cli
real_save = torch.save

def slow_save(obj, f, *args, **kwargs):  # test hook: the .fxp is written, then held open
    real_save(obj, f, *args, **kwargs)
    print("SAVING", flush=True)
    time.sleep(60)

torch.save = slow_save
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_during_the_cli_write_leaves_the_old_pair_and_no_temporary(lenet_checkpoint, old_pair, tmp_path):
    put(tmp_path, old_pair)
    argv = [str(a) for a in [*prune_argv(lenet_checkpoint, tmp_path / "x.fxp", "--sparsity", "0.3"),
                             "--onnx", tmp_path / "x.onnx"]]
    proc = subprocess.Popen([sys.executable, "-c", CLI_CHILD, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        for line in proc.stdout:  # the summary comes after the write: only the hook's line is expected
            if line.strip() == "SAVING":
                break
        else:
            pytest.fail(f"the child ended before writing: {proc.stderr.read()}")
        assert any(n.endswith(".tmp") for n in os.listdir(tmp_path))  # the write really is pending
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGTERM
    assert listing(tmp_path) == ["x.fxp", "x.onnx"]
    assert {n: (tmp_path / n).read_bytes() for n in old_pair} == old_pair
