"""Fashion-MNIST for training, fine-tuning and calibrating pruned models.

The data come from the four standard IDX files of Fashion-MNIST (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
optionally ``.gz``), parsed here with numpy. fxprune never downloads anything; the files are
looked up in

1. the ``root`` argument, if given;
2. ``$FXPRUNE_DATA``, if set;
3. the folders of :data:`SEARCH_PATHS` (``/usr/share/datasets/fashion-mnist``, where Debian's
   ``dataset-fashion-mnist`` package installs them: ``apt-get install dataset-fashion-mnist``).

If they are not found, :class:`DataError` (an :class:`fxprune.errors.InputError`) says how to
get them.

Splits (``split=``): ``"train"`` and ``"verify"`` are carved from the 60 000 training images
by a fixed permutation (seed :data:`SPLIT_SEED`; 55 000 / 5 000; the verification set serves
per-layer budget searches), ``"test"`` is the 10 000 official test images. Images are float32
``N x 1 x 28 x 28``, normalised with the usual Fashion-MNIST mean/std (:data:`MEAN`,
:data:`STD`); labels are int64. ``cifar_shape=True`` pads every image with 2 black pixels to
32 x 32 (before normalisation, so the border looks like the black background) and repeats it to
3 channels, for the CIFAR-shaped models of the zoo.

:func:`bundled` needs no files: it returns 500 test images (50 per class) shipped with fxprune
in ``fxprune/assets/fashion_mnist_subset.npz`` (made by :func:`make_bundled_subset`).

    >>> from fxprune.training import data
    >>> train, verify, test = data.loaders(128, seed=0)          # doctest: +SKIP
    >>> batches = data.calibration(512)                          # doctest: +SKIP
    >>> small = data.bundled()                                   # works anywhere
"""
from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ..atomic import atomic_write
from ..errors import InputError

__all__ = [
    "CLASSES", "MEAN", "STD", "SEARCH_PATHS", "SPLIT_SEED", "VERIFY_FRACTION", "DataError",
    "read_idx", "write_idx", "find_root", "available", "load_fashion_mnist", "loaders",
    "calibration", "bundled", "make_bundled_subset", "to_tensor",
]

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN = 0.2860  # mean of the 60k training pixels scaled to [0, 1]
STD = 0.3530
SEARCH_PATHS: list[str] = ["/usr/share/datasets/fashion-mnist"]
ENV_VAR = "FXPRUNE_DATA"
SPLIT_SEED = 0
VERIFY_FRACTION = 1 / 12  # 5 000 of the 60 000 training images
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLITS = ("train", "verify", "test")
BUNDLED_PATH = Path(__file__).resolve().parents[1] / "assets" / "fashion_mnist_subset.npz"


class DataError(InputError):
    """The Fashion-MNIST files are missing or malformed, or a data option is invalid."""


# ------------------------------------------------------------------------------- IDX

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed, told apart by its first bytes)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != header + count * dtype.itemsize:
        raise DataError(f"{path}: IDX header says shape {shape} but the file has "
                        f"{len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype, count, header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``)."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    array = np.asarray(array)
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DataError(f"IDX cannot store dtype {array.dtype}")
    body = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            + array.astype(_IDX_DTYPES[code]).tobytes())
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(body)


# --------------------------------------------------------------------------- lookup


def _file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(folder: Path) -> bool:
    return all(_file(folder, stem) for pair in FILES.values() for stem in pair)


def _candidates(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    out = []
    if os.environ.get(ENV_VAR):
        out.append(Path(os.environ[ENV_VAR]))
    return out + [Path(p) for p in SEARCH_PATHS]


def find_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files, or :class:`DataError`."""
    tried = _candidates(root)
    for folder in tried:
        if _complete(folder):
            return folder
    stems = ", ".join(s + "[.gz]" for pair in FILES.values() for s in pair)
    raise DataError(
        f"Fashion-MNIST IDX files not found (looked in: {', '.join(map(str, tried)) or 'nowhere'}). "
        f"Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, puts them in "
        f"{SEARCH_PATHS[0] if SEARCH_PATHS else '/usr/share/datasets/fashion-mnist'}) or set "
        f"{ENV_VAR} to a folder with {stems}. fxprune never downloads data; "
        f"fxprune.training.data.bundled() gives a 500-image subset that needs no files.")


def available(root: str | os.PathLike | None = None) -> bool:
    """Whether the full Fashion-MNIST files can be found (see :func:`find_root`)."""
    try:
        find_root(root)
        return True
    except DataError:
        return False


@functools.lru_cache(maxsize=4)
def _read_pair(images: str, labels: str, _mtimes: tuple) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{images} / {labels}: expected uint8 N x H x W images and N labels, "
                        f"got {x.dtype} {x.shape} and {y.dtype} {y.shape}")
    return x, y.astype(np.int64)


def _raw(part: str, root: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    folder = find_root(root)
    paths = [_file(folder, stem) for stem in FILES[part]]
    return _read_pair(str(paths[0]), str(paths[1]), tuple(p.stat().st_mtime_ns for p in paths))


def _split_indices(n: int, split: str) -> np.ndarray:
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_verify = int(round(n * VERIFY_FRACTION))
    return np.sort(perm[:n_verify] if split == "verify" else perm[n_verify:])


def _raw_split(split: str, root) -> tuple[np.ndarray, np.ndarray]:
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "test":
        return _raw("test", root)
    x, y = _raw("train", root)
    idx = _split_indices(len(x), split)
    return x[idx], y[idx]


# ------------------------------------------------------------------------ tensors


def to_tensor(images: np.ndarray | torch.Tensor, *, cifar_shape: bool = False) -> torch.Tensor:
    """uint8 ``N x 28 x 28`` -> normalised float32 ``N x 1 x 28 x 28`` (or ``N x 3 x 32 x 32``).

    With ``cifar_shape`` the 3 channels are an expanded view of one (no extra memory); it is
    meant to be read (batched by a DataLoader), not written in place.
    """
    x = torch.as_tensor(np.asarray(images)).unsqueeze(1)
    if cifar_shape:
        x = torch.nn.functional.pad(x, (2, 2, 2, 2))
    x = (x.float().div_(255.0).sub_(MEAN)).div_(STD)
    return x.expand(-1, 3, -1, -1) if cifar_shape else x


def _dataset(x: np.ndarray, y: np.ndarray, cifar_shape: bool) -> TensorDataset:
    return TensorDataset(to_tensor(x, cifar_shape=cifar_shape), torch.as_tensor(y, dtype=torch.int64))


def load_fashion_mnist(split: str = "train", *, cifar_shape: bool = False,
                       root: str | os.PathLike | None = None) -> TensorDataset:
    """The ``"train"`` (55k), ``"verify"`` (5k) or ``"test"`` (10k) split as a TensorDataset."""
    return _dataset(*_raw_split(split, root), cifar_shape)


def loaders(batch_size: int = 128, *, cifar_shape: bool = False, seed: int = 0,
            root: str | os.PathLike | None = None, train_subset: int | None = None,
            eval_batch_size: int | None = None, num_workers: int = 0,
            ) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(train, verify, test) DataLoaders; train is shuffled by a generator seeded with ``seed``.

    ``train_subset`` keeps that many training images (a seeded random choice) for quick runs.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    x, y = _raw_split("train", root)
    if train_subset is not None:
        if not 1 <= train_subset <= len(x):
            raise DataError(f"train_subset must be in [1, {len(x)}], got {train_subset}")
        keep = np.sort(np.random.default_rng(seed).choice(len(x), train_subset, replace=False))
        x, y = x[keep], y[keep]
    gen = torch.Generator().manual_seed(seed)
    ebs = eval_batch_size or max(batch_size, 512)
    train = DataLoader(_dataset(x, y, cifar_shape), batch_size=batch_size, shuffle=True,
                       generator=gen, num_workers=num_workers)
    verify = DataLoader(load_fashion_mnist("verify", cifar_shape=cifar_shape, root=root),
                        batch_size=ebs, num_workers=num_workers)
    test = DataLoader(load_fashion_mnist("test", cifar_shape=cifar_shape, root=root),
                      batch_size=ebs, num_workers=num_workers)
    return train, verify, test


def calibration(n: int = 512, *, batch_size: int = 128, cifar_shape: bool = False, seed: int = 0,
                root: str | os.PathLike | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` training-split images (seeded choice) as a list of ``(images, labels)`` batches."""
    x, y = _raw_split("train", root)
    if not 1 <= n <= len(x) or batch_size < 1:
        raise DataError(f"need 1 <= n <= {len(x)} and batch_size >= 1, got n={n}, "
                        f"batch_size={batch_size}")
    idx = np.random.default_rng(seed).choice(len(x), n, replace=False)
    xs = to_tensor(x[idx], cifar_shape=cifar_shape)
    ys = torch.as_tensor(y[idx])
    return [(xs[i:i + batch_size].contiguous(), ys[i:i + batch_size])
            for i in range(0, n, batch_size)]


# ------------------------------------------------------------------------ bundled


def bundled(cifar_shape: bool = False) -> TensorDataset:
    """The 500 bundled Fashion-MNIST test images (50 per class); needs no data files."""
    if not BUNDLED_PATH.is_file():
        raise DataError(f"bundled subset missing: {BUNDLED_PATH} (reinstall fxprune)")
    with np.load(BUNDLED_PATH) as z:
        return _dataset(z["images"], z["labels"].astype(np.int64), cifar_shape)


def make_bundled_subset(out_path: str | os.PathLike = BUNDLED_PATH, *, per_class: int = 50,
                        seed: int = 0, root: str | os.PathLike | None = None) -> Path:
    """Write ``per_class`` test images of each class (seeded choice) as uint8 to ``out_path``.

    This is how ``fxprune/assets/fashion_mnist_subset.npz`` was made:
    ``python -c "from fxprune.training.data import make_bundled_subset; make_bundled_subset()"``.
    """
    x, y = _raw("test", root)
    rng = np.random.default_rng(seed)
    idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                                  for c in range(len(CLASSES))]))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: given a path, np.savez would append ".npz" to it
            np.savez_compressed(f, images=x[idx], labels=y[idx].astype(np.uint8),
                                test_indices=idx.astype(np.int32))

    atomic_write(out, write)
    return out
