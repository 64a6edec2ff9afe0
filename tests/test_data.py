"""fxprune.training.data: IDX parsing, lookup, splits, calibration, CIFAR shape, bundled subset.

Everything except the ``full`` tests runs on tiny synthetic IDX files, so the suite passes
without Debian's ``dataset-fashion-mnist`` package.
"""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from fxprune.training import data
from fxprune.errors import FxpruneError, InputError

N_TRAIN, N_TEST = 240, 60  # 240 / 12 = 20 verification images


def _images(n: int, offset: int) -> np.ndarray:
    """Random uint8 images whose first two pixels encode their index (to identify them)."""
    x = np.random.default_rng(offset).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    idx = np.arange(offset, offset + n)
    x[:, 0, 0], x[:, 0, 1] = idx % 256, idx // 256
    return x


def _index_of(images: torch.Tensor) -> np.ndarray:
    """Undo the normalisation of the first two pixels and decode the index."""
    pix = np.rint((images[:, 0, 0, :2].numpy() * data.STD + data.MEAN) * 255).astype(int)
    return pix[:, 0] + 256 * pix[:, 1]


def write_fake(folder, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    labels = lambda n: (np.arange(n) % 10).astype(np.uint8)  # noqa: E731
    data.write_idx(folder / f"train-images-idx3-ubyte{ext}", _images(N_TRAIN, 0))
    data.write_idx(folder / f"train-labels-idx1-ubyte{ext}", labels(N_TRAIN))
    data.write_idx(folder / f"t10k-images-idx3-ubyte{ext}", _images(N_TEST, 10_000))
    data.write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", labels(N_TEST))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Synthetic Fashion-MNIST in $FXPRUNE_DATA; the system search path points nowhere."""
    root = tmp_path / "fmnist"
    write_fake(root)
    monkeypatch.setenv(data.ENV_VAR, str(root))
    monkeypatch.setattr(data, "SEARCH_PATHS", [str(tmp_path / "nothing-here")])
    return root


# ------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip_by_hand(tmp_path, gz):
    """A hand-written IDX file (the byte layout of the spec) parses, raw and gzipped."""
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    body = bytes([0, 0, 0x08, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") \
        + (4).to_bytes(4, "big") + arr.tobytes()
    path = tmp_path / ("x.idx3.gz" if gz else "x.idx3")
    path.write_bytes(gzip.compress(body) if gz else body)
    out = data.read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_write_read(tmp_path, gz, dtype):
    arr = (np.arange(30).reshape(5, 6) - 7).astype(dtype) if dtype != np.uint8 else \
        np.arange(30, dtype=np.uint8)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    data.write_idx(path, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
    out = data.read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_idx_rejects_garbage(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"hello world")
    with pytest.raises(data.DataError, match="not an IDX file"):
        data.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"abc")
    with pytest.raises(data.DataError, match="shape"):
        data.read_idx(short)


# --------------------------------------------------------------------------- lookup


def test_env_lookup_gz_and_raw(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SEARCH_PATHS", [])
    for gz in (True, False):
        root = tmp_path / f"d{gz}"
        write_fake(root, gz=gz)
        monkeypatch.setenv(data.ENV_VAR, str(root))
        assert data.find_root() == root and data.available()
        test = data.load_fashion_mnist("test")
        assert len(test) == N_TEST
        np.testing.assert_array_equal(_index_of(test.tensors[0]), np.arange(10_000, 10_000 + N_TEST))


def test_explicit_root_wins(tmp_path, fake):
    other = tmp_path / "other"
    write_fake(other)
    assert data.find_root(other) == other
    assert data.find_root() == fake


def test_missing_data_error(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "SEARCH_PATHS", [str(empty)])
    assert not data.available()
    with pytest.raises(data.DataError) as info:
        data.load_fashion_mnist("train")
    assert isinstance(info.value, InputError) and isinstance(info.value, FxpruneError)
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "FXPRUNE_DATA" in msg
    assert str(empty) in msg and "bundled()" in msg
    # an incomplete folder is not enough either
    (empty / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(data.DataError):
        data.calibration(8)


# ------------------------------------------------------------------ splits & tensors


def test_splits_disjoint_and_fixed(fake):
    train = data.load_fashion_mnist("train")
    verify = data.load_fashion_mnist("verify")
    n_verify = round(N_TRAIN * data.VERIFY_FRACTION)
    assert (len(train), len(verify)) == (N_TRAIN - n_verify, n_verify)
    tr, ve = _index_of(train.tensors[0]), _index_of(verify.tensors[0])
    assert not set(tr) & set(ve)
    assert sorted(set(tr) | set(ve)) == list(range(N_TRAIN))
    np.testing.assert_array_equal(train.tensors[1].numpy(), tr % 10)  # labels follow images
    again = data.load_fashion_mnist("verify")
    assert torch.equal(again.tensors[0], verify.tensors[0])
    with pytest.raises(data.DataError, match="split"):
        data.load_fashion_mnist("val")


def test_tensor_format(fake):
    test = data.load_fashion_mnist("test")
    x, y = test.tensors
    assert x.shape == (N_TEST, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw = data.read_idx(fake / "t10k-images-idx3-ubyte.gz")
    expect = (torch.from_numpy(raw).float() / 255 - data.MEAN) / data.STD
    torch.testing.assert_close(x[:, 0], expect)


def test_cifar_shape(fake):
    x28 = data.load_fashion_mnist("test").tensors[0]
    x32 = data.load_fashion_mnist("test", cifar_shape=True).tensors[0]
    assert x32.shape == (N_TEST, 3, 32, 32)
    assert torch.equal(x32[:, 0], x32[:, 1]) and torch.equal(x32[:, 0], x32[:, 2])
    torch.testing.assert_close(x32[:, :, 2:30, 2:30], x28.expand(-1, 3, -1, -1))
    black = (0 - data.MEAN) / data.STD  # the padding is black, like the background
    border = torch.cat([x32[..., :2, :].flatten(), x32[..., -2:, :].flatten(),
                        x32[..., :2].flatten(), x32[..., -2:].flatten()])
    torch.testing.assert_close(border, torch.full_like(border, black))


def test_calibration(fake):
    batches = data.calibration(50, batch_size=16, seed=3)
    assert [len(b[0]) for b in batches] == [16, 16, 16, 2]
    xs = torch.cat([b[0] for b in batches])
    assert xs.shape == (50, 1, 28, 28)
    idx = _index_of(xs)
    assert len(set(idx)) == 50
    verify = set(_index_of(data.load_fashion_mnist("verify").tensors[0]))
    assert not set(idx) & verify  # drawn from the training split only
    again = torch.cat([b[0] for b in data.calibration(50, batch_size=16, seed=3)])
    assert torch.equal(again, xs)
    other = torch.cat([b[0] for b in data.calibration(50, batch_size=16, seed=4)])
    assert not torch.equal(other, xs)
    cifar = data.calibration(10, batch_size=4, cifar_shape=True)
    assert cifar[0][0].shape == (4, 3, 32, 32) and cifar[0][0].is_contiguous()
    with pytest.raises(data.DataError):
        data.calibration(N_TRAIN + 1)


def test_loaders(fake):
    train, verify, test = data.loaders(32, seed=1, train_subset=100)
    assert len(train.dataset) == 100 and len(verify.dataset) == 20 and len(test.dataset) == N_TEST
    x, y = next(iter(train))
    assert x.shape == (32, 1, 28, 28) and y.shape == (32,)
    first = [_index_of(b[0]).tolist() for b in data.loaders(32, seed=1, train_subset=100)[0]]
    assert first == [_index_of(b[0]).tolist() for b in data.loaders(32, seed=1, train_subset=100)[0]]
    xc, _ = next(iter(data.loaders(8, cifar_shape=True, eval_batch_size=8)[2]))
    assert xc.shape == (8, 3, 32, 32)
    with pytest.raises(data.DataError):
        data.loaders(32, train_subset=10**6)


# -------------------------------------------------------------------------- bundled


def test_bundled_subset(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "SEARCH_PATHS", [str(tmp_path)])  # no full data needed
    ds = data.bundled()
    x, y = ds.tensors
    assert len(ds) == 500 and x.shape == (500, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and torch.bincount(y, minlength=10).tolist() == [50] * 10
    assert -1 < x.min() < -0.8 and 2.0 < x.max() < 2.1  # normalised black .. white
    assert data.bundled(cifar_shape=True).tensors[0].shape == (500, 3, 32, 32)
    assert data.BUNDLED_PATH.stat().st_size < 400_000
    assert (data.BUNDLED_PATH.parent / "README.md").is_file()


def test_make_bundled_subset(fake, tmp_path):
    out = data.make_bundled_subset(tmp_path / "sub.npz", per_class=3, seed=0)
    with np.load(out) as z:
        assert z["images"].shape == (30, 28, 28) and z["images"].dtype == np.uint8
        assert np.bincount(z["labels"]).tolist() == [3] * 10
        np.testing.assert_array_equal(z["test_indices"] + 10_000, _index_of(
            data.to_tensor(z["images"])))


# ------------------------------------------------------------------ real data (opt.)

full = pytest.mark.skipif(not data.available(), reason="Fashion-MNIST IDX files not installed "
                          "(apt-get install dataset-fashion-mnist or set FXPRUNE_DATA)")


@full
def test_full_sizes():
    assert [len(data.load_fashion_mnist(s)) for s in data.SPLITS] == [55_000, 5_000, 10_000]
    y = data.load_fashion_mnist("test").tensors[1]
    assert torch.bincount(y).tolist() == [1000] * 10


@full
def test_bundled_matches_full_test_set():
    with np.load(data.BUNDLED_PATH) as z:
        idx, images = z["test_indices"], z["images"]
    x, _ = data._raw("test", None)
    np.testing.assert_array_equal(x[idx], images)
