"""Tests for stetune.data. Offline: on-disk formats are written by the tests themselves."""

import gzip
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stetune.data import (
    Dataset,
    DatasetError,
    DatasetNotFoundError,
    _DATASETS,
    _read_idx,
    dataset_info,
    list_datasets,
    augment_batch,
    batch_indices,
    load_dataset,
    register_dataset,
)

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    # never let a developer's STETUNE_DATA or system datasets leak into tests that don't ask for them
    monkeypatch.delenv("STETUNE_DATA", raising=False)
    monkeypatch.setenv("STETUNE_SYSTEM_DATASETS", str(tmp_path / "no-system-datasets"))


def idx_bytes(arr: np.ndarray) -> bytes:
    """uint8 `arr` in IDX format: magic 0x00 0x00 0x08 ndim, big-endian u32 dims, then the data."""
    return bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes() + arr.astype(np.uint8).tobytes()


def write_idx(path: Path, arr: np.ndarray) -> None:
    """Write uint8 `arr` in IDX format, gzipped if path ends .gz."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(idx_bytes(arr))


def tiny_mnist(seed=0, n_train=12, n_val=5):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
            rng.integers(0, 256, (n_val, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_val, dtype=np.uint8))


def expected_normalised(x_train_u8, x_u8):
    """What load_dataset should produce from uint8 (N, C, H, W) data: train-split per-channel standardisation."""
    ref = torch.from_numpy(x_train_u8).float() / 255
    mean, std = ref.mean(dim=(0, 2, 3), keepdim=True), ref.std(dim=(0, 2, 3), keepdim=True)
    return (torch.from_numpy(x_u8).float() / 255 - mean) / std


def check_exact(ds: Dataset, x_tr, y_tr, x_va, y_va):
    """ds holds exactly the uint8 arrays (N, C, H, W) and labels, in order."""
    torch.testing.assert_close(ds.x_train, expected_normalised(x_tr, x_tr), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ds.x_val, expected_normalised(x_tr, x_va), rtol=1e-5, atol=1e-5)
    assert torch.equal(ds.y_train, torch.from_numpy(y_tr).long())
    assert torch.equal(ds.y_val, torch.from_numpy(y_va).long())


def check_common(ds: Dataset, channels: int, size: int):
    for x in (ds.x_train, ds.x_val):
        assert x.dtype == torch.float32 and x.is_contiguous() and x.shape[1:] == (channels, size, size)
    for y in (ds.y_train, ds.y_val):
        assert y.dtype == torch.int64 and 0 <= y.min() and y.max() < ds.num_classes
    assert (ds.in_channels, ds.image_size, ds.num_classes) == (channels, size, 10)
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_val) == len(ds.y_val)


# -----------------------------------------------------------------------------
# in-memory datasets


def test_digits():
    ds = load_dataset("digits")
    check_common(ds, 1, 28)
    assert (len(ds.x_train), len(ds.x_val)) == (1437, 360)
    assert set(ds.y_train.tolist()) == set(range(10)) and not ds.augment
    assert abs(ds.x_train.mean().item()) < 1e-4 and abs(ds.x_train.std().item() - 1) < 1e-3
    # the split is a permutation of all 1797 images, and depends on the seed
    other = load_dataset("digits", seed=1)
    assert not torch.equal(ds.y_train, other.y_train)
    assert sorted(ds.y_train.tolist() + ds.y_val.tolist()) == sorted(other.y_train.tolist() + other.y_val.tolist())


def test_synthetic_deterministic():
    a, b, c = load_dataset("synthetic", seed=3), load_dataset("synthetic", seed=3), load_dataset("synthetic", seed=4)
    check_common(a, 1, 28)
    assert (len(a.x_train), len(a.x_val)) == (512, 128)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.x_train, c.x_train)
    # learnable: nearest class mean (from train) beats chance by far on val
    means = torch.stack([a.x_train[a.y_train == k].mean(0) for k in range(10)]).flatten(1)
    pred = torch.cdist(a.x_val.flatten(1), means).argmin(1)
    assert (pred == a.y_val).float().mean() > 0.5


def test_limit():
    ds = load_dataset("synthetic", limit=7)
    assert (len(ds.x_train), len(ds.x_val)) == (7, 7)
    torch.testing.assert_close(ds.y_train, load_dataset("synthetic").y_train[:7])
    with pytest.raises(ValueError, match="limit"):
        load_dataset("synthetic", limit=0)


def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"dataset must be one of .*but got dataset='foo'"):
        load_dataset("foo")
    assert list_datasets()[:5] == ("mnist", "fashion-mnist", "cifar10", "digits", "synthetic")
    assert [dataset_info(d).augment for d in list_datasets()[:5]] == [False, False, True, False, False]
    assert dataset_info("cifar10").input_size == (3, 32, 32)


# -----------------------------------------------------------------------------
# on-disk formats


def test_read_idx_gz_and_plain(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.gz", "a"):
        write_idx(tmp_path / name, arr)
        out = _read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and np.array_equal(out, arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DatasetError, match="magic"):
        _read_idx(tmp_path / "bad")


@pytest.mark.parametrize("subdir", ["fashion-mnist", ".", "FashionMNIST/raw"])
def test_fashion_mnist_idx_round_trip(tmp_path, subdir):
    x_tr, y_tr, x_va, y_va = tiny_mnist()
    folder = tmp_path / subdir
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(IDX_NAMES, (x_tr, y_tr, x_va, y_va)):
        write_idx(folder / f"{name}.gz", arr)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    check_common(ds, 1, 28)
    check_exact(ds, x_tr[:, None], y_tr, x_va[:, None], y_va)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_system(tmp_path, monkeypatch):
    monkeypatch.setenv("STETUNE_SYSTEM_DATASETS", str(DEBIAN_FASHION.parent))
    # full counts from the headers, then a limited load to keep the test quick
    assert _read_idx(DEBIAN_FASHION / "train-labels-idx1-ubyte.gz").shape == (60000,)
    assert _read_idx(DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz").shape == (10000, 28, 28)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "empty", download=False, limit=1000)
    check_common(ds, 1, 28)
    assert (len(ds.x_train), len(ds.x_val)) == (1000, 1000) and not ds.augment
    assert set(ds.y_train.tolist()) == set(range(10))


@pytest.mark.parametrize("suffix", ["", ".gz"], ids=["plain", "gz"])
def test_mnist_idx_offline_without_torchvision(tmp_path, suffix):
    # <root>/MNIST/raw, where torchvision puts it: read by our own IDX reader, .gz or not
    x_tr, y_tr, x_va, y_va = tiny_mnist(seed=1)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, arr in zip(IDX_NAMES, (x_tr, y_tr, x_va, y_va)):
        write_idx(raw / f"{name}{suffix}", arr)
    ds = load_dataset("mnist", data_dir=tmp_path, download=False)
    check_common(ds, 1, 28)
    check_exact(ds, x_tr[:, None], y_tr, x_va[:, None], y_va)
    # in a fresh interpreter: the files on disk never reach torchvision (whose reader asserts on garbage)
    code = (f"import sys; from stetune.data import load_dataset; "
            f"d = load_dataset('mnist', data_dir={str(tmp_path)!r}, download=False); "
            f"print(len(d.x_train), 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(x_tr)), "False"]


@pytest.mark.parametrize("key", [lambda k: k.encode(), str], ids=["bytes-keys", "str-keys"])
def test_cifar10_offline(tmp_path, key):
    # cifar-10-batches-py: pickled dicts with "data" uint8 (N, 3072) in CHW order and "labels" a list of ints
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data, labels = rng.integers(0, 256, (3, 3072), dtype=np.uint8), rng.integers(0, 10, 3).tolist()
        batches[name] = data, labels
        (folder / name).write_bytes(pickle.dumps({key("data"): data, key("labels"): labels}))
    (folder / "batches.meta").write_bytes(pickle.dumps({key("label_names"): [f"c{i}" for i in range(10)]}))

    ds = load_dataset("cifar10", data_dir=tmp_path, download=False)
    check_common(ds, 3, 32)
    assert ds.augment and (len(ds.x_train), len(ds.x_val)) == (15, 3)
    x_tr = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    y_tr = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    x_va, y_va = batches["test_batch"][0].reshape(-1, 3, 32, 32), np.array(batches["test_batch"][1])
    check_exact(ds, x_tr, y_tr, x_va, y_va)


@pytest.mark.parametrize("name,where", [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw"),
                                        ("cifar10", "cifar-10-batches-py")])
def test_missing_offline(tmp_path, name, where):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, data_dir=empty, download=False)
    msg = str(info.value)
    assert name in msg and str(empty / where) in msg and "network access" in msg
    assert isinstance(info.value, FileNotFoundError)
    if name == "fashion-mnist":  # every place looked, and the Debian package
        assert str(empty / "fashion-mnist") in msg and str(tmp_path / "no-system-datasets" / "fashion-mnist") in msg
        assert "apt-get install dataset-fashion-mnist" in msg


def test_default_data_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("STETUNE_DATA", str(tmp_path / "from-env"))
    with pytest.raises(DatasetNotFoundError, match="from-env"):
        load_dataset("mnist", download=False)


# -----------------------------------------------------------------------------
# files that exist but are unusable: a one-line DatasetError naming the file


def _with_header(ndim: int, dims: tuple, data: bytes = b"", dtype: int = 0x08) -> bytes:
    return bytes([0, 0, dtype, ndim]) + np.asarray(dims, ">u4").tobytes() + data


_X, _Y, _XV, _YV = tiny_mnist()
# case -> (which of the four files, its bytes, a fragment of the message)
IDX_GARBAGE = {
    "random-bytes": (0, bytes(range(7, 107)), "must start with magic 00 00 <dtype> <ndim 1..3>"),
    "empty": (1, b"", "must start with magic"),
    "too-short": (1, b"\x00\x00", "must start with magic"),
    "unknown-dtype": (0, _with_header(3, _X.shape, _X.tobytes(), dtype=0x07), "must start with magic"),
    "ndim-0": (1, bytes([0, 0, 0x08, 0]), "ndim 1..3"),
    "ndim-4": (0, _with_header(4, (12, 1, 28, 28), _X.tobytes()), "ndim 1..3"),
    "header-cut": (0, bytes([0, 0, 0x08, 3]) + (12).to_bytes(4, "big"), "hold 3 u32 dims after the magic"),
    "data-short": (0, idx_bytes(_X)[:-1], "data bytes"),
    "data-long": (2, idx_bytes(_XV) + b"\x00", "data bytes"),
    "huge-dims": (0, _with_header(3, (2**32 - 1,) * 3, b"\x00" * 64), "data bytes"),
    "labels-count": (1, idx_bytes(_Y[:-1]), f"must be integers of shape ({len(_X)},)"),
    "labels-2d": (3, idx_bytes(_YV[:, None]), "must be integers of shape"),
    "labels-range": (3, idx_bytes(np.r_[_YV[:-1], 10]), "must be in [0, 10)"),
    "images-20x20": (0, idx_bytes(np.zeros((12, 20, 20), np.uint8)), "must be uint8 (N >= 1, 28, 28)"),
    "images-1d": (2, idx_bytes(_XV.ravel()), "must be uint8 (N >= 1, 28, 28)"),
    "images-none": (2, idx_bytes(np.zeros((0, 28, 28), np.uint8)), "must be uint8 (N >= 1, 28, 28)"),
    "images-int16": (0, _with_header(3, _X.shape, _X.astype(">i2").tobytes(), dtype=0x0B), "must be uint8"),
}
PLACES = {"mnist": "MNIST/raw", "fashion-mnist": "fashion-mnist"}


def write_set(folder: Path, files: dict[int, bytes] = {}, suffix: str = "") -> list[Path]:
    """The tiny valid set in `folder`, but with `files` (index -> raw bytes) in place of those files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}{suffix}" for name in IDX_NAMES]
    for i, (path, arr) in enumerate(zip(paths, (_X, _Y, _XV, _YV))):
        data = files.get(i, idx_bytes(arr))
        path.write_bytes(gzip.compress(data) if suffix == ".gz" else data)
    return paths


def raises_naming(path: Path, fragment: str, **load) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(download=False, **load)
    msg = str(info.value)
    assert str(path) in msg and fragment in msg and "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("case", list(IDX_GARBAGE))
@pytest.mark.parametrize("name", list(PLACES))
def test_garbage_idx_file_is_a_dataset_error_naming_it(tmp_path, name, case):
    which, data, fragment = IDX_GARBAGE[case]
    paths = write_set(tmp_path / PLACES[name], {which: data})
    msg = raises_naming(paths[which], fragment, name=name, data_dir=tmp_path)
    assert "delete it" in msg and isinstance(DatasetError(msg), ValueError)


@pytest.mark.parametrize("case", ["labels-range", "data-short"])
def test_garbage_idx_file_gzipped_or_in_the_system_folder(tmp_path, monkeypatch, case):
    which, data, fragment = IDX_GARBAGE[case]
    paths = write_set(tmp_path / "system" / "fashion-mnist", {which: data}, suffix=".gz")
    monkeypatch.setenv("STETUNE_SYSTEM_DATASETS", str(tmp_path / "system"))
    raises_naming(paths[which], fragment, name="fashion-mnist", data_dir=tmp_path / "empty")


def test_a_gz_file_that_is_not_gzip(tmp_path):
    paths = write_set(tmp_path / "MNIST" / "raw", suffix=".gz")
    paths[2].write_bytes(idx_bytes(_XV))  # an uncompressed file under a .gz name
    raises_naming(paths[2], "must be a readable gzip file, but reading it failed", name="mnist", data_dir=tmp_path)


def test_a_cut_off_gz_file(tmp_path):
    paths = write_set(tmp_path / "fashion-mnist", suffix=".gz")
    paths[0].write_bytes(paths[0].read_bytes()[:200])  # a partial download
    raises_naming(paths[0], "must be a readable gzip file", name="fashion-mnist", data_dir=tmp_path)


def _cifar_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}))
    return folder


@pytest.mark.parametrize("data,fragment", [
    (bytes(range(256)) * 4, "must be a pickled dict of numpy arrays, but reading it failed"),
    (b"", "must be a pickled dict of numpy arrays"),
    (pickle.dumps([1, 2, 3]), "must be a pickled dict, but got a list"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}), "must hold 'data' and 'labels', but got no ['labels']"),
    (pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}), "must hold uint8 'data' of N x 3072"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}), "must hold one label per image"),
], ids=["random-bytes", "empty", "a-list", "no-labels", "data-size", "labels-count"])
def test_garbage_cifar_batch_is_a_dataset_error_naming_it(tmp_path, data, fragment):
    folder = _cifar_folder(tmp_path)
    (folder / "data_batch_2").write_bytes(data)
    raises_naming(folder / "data_batch_2", fragment, name="cifar10", data_dir=tmp_path)


@pytest.fixture
def bad_loader():
    """Register a dataset whose loader returns whatever the test sets, to reach load_dataset's checks."""
    out = {}
    register_dataset("bad-loader", num_classes=3, input_size=(1, 4, 4))(lambda root, download, seed: out["v"])
    yield out
    _DATASETS.pop("bad-loader")


@pytest.mark.parametrize("change,fragment", [
    (dict(y_tr=torch.tensor([0.0, 1.0])), "must give 1-D integer train labels, one per example"),
    (dict(y_va=torch.tensor([0])), "must give 1-D integer val labels, one per example, but got shape=(1,)"),
    (dict(y_tr=torch.tensor([0, 3])), "must give train labels in [0, 3), but got labels in [0, 3]"),
    (dict(y_va=torch.tensor([-1, 0])), "must give val labels in [0, 3), but got labels in [-1, 0]"),
    (dict(x_tr=torch.zeros(0, 1, 4, 4), y_tr=torch.zeros(0, dtype=torch.long)), "must give a non-empty train split"),
    (dict(x_va=torch.zeros(2, 1, 5, 5)),
     "val examples of its registered input_size (1, 4, 4), but got shape=(2, 1, 5, 5)"),
    (dict(x_tr=torch.zeros(2, 1, 4, 4, dtype=torch.int32)), "must give uint8 or float train examples"),
    (dict(y_tr=[0, 1]), "must give train images and labels as tensors, but got Tensor, list"),
])
def test_loader_output_is_checked_for_every_dataset(bad_loader, change, fragment):
    good = dict(x_tr=torch.rand(2, 1, 4, 4), y_tr=torch.tensor([0, 2]), x_va=torch.rand(2, 1, 4, 4),
                y_va=torch.tensor([1, 2]))
    bad_loader["v"] = tuple({**good, **change}[k] for k in ("x_tr", "y_tr", "x_va", "y_va"))
    with pytest.raises(DatasetError) as info:
        load_dataset("bad-loader")
    assert str(info.value).startswith("dataset 'bad-loader' must give") and fragment in str(info.value)
    bad_loader["v"] = tuple(good.values())
    assert len(load_dataset("bad-loader").x_train) == 2


# -----------------------------------------------------------------------------
# augmentation and batching


def test_augment_batch_is_shift_and_flip():
    pad, n = 4, 24
    x = torch.randn(n, 2, 9, 11)
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=pad)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, augment_batch(x, torch.Generator().manual_seed(0), pad=pad), rtol=0, atol=0)
    assert not torch.equal(out, augment_batch(x, torch.Generator().manual_seed(1), pad=pad))

    # every output image is some crop of the zero-padded input, possibly flipped
    xp = F.pad(x, (pad,) * 4)
    h, w = x.shape[-2:]
    for k in range(n):
        candidates = [crop.flip(-1) if flip else crop
                      for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for flip in (False, True)
                      for crop in [xp[k, :, dy:dy + h, dx:dx + w]]]
        assert any(torch.equal(out[k], c) for c in candidates), k


def test_augment_batch_flip_rate_and_no_pad():
    x = torch.arange(5.0).expand(1000, 1, 1, 5).contiguous()  # pad=0: only flips change the image
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=0)
    flipped = (out == x.flip(-1)).all(dim=(1, 2, 3))
    assert ((out == x).all(dim=(1, 2, 3)) | flipped).all()
    assert 400 < flipped.sum() < 600
    assert torch.equal(x, torch.arange(5.0).expand(1000, 1, 1, 5))  # the input is left alone


def test_batch_indices():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    batches = batch_indices(10, 3, g())
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert torch.cat(batches).tolist() != list(range(10))
    assert all(torch.equal(a, b) for a, b in zip(batches, batch_indices(10, 3, g())))
    assert [len(b) for b in batch_indices(10, 3, g(), drop_last=True)] == [3, 3, 3]
    assert [len(b) for b in batch_indices(9, 3, g(), drop_last=True)] == [3, 3, 3]
    assert torch.cat(batch_indices(7, 4, None, shuffle=False)).tolist() == list(range(7))
    assert batch_indices(0, 4, g()) == []
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(10, 0, g())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_cpu_generator():
    ds = load_dataset("synthetic", device="cuda", limit=64)
    assert ds.x_train.is_cuda and ds.y_val.is_cuda
    out = augment_batch(ds.x_train, torch.Generator().manual_seed(0))
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), augment_batch(ds.x_train.cpu(), torch.Generator().manual_seed(0)))
    assert batch_indices(64, 16, torch.Generator().manual_seed(0), device="cuda")[0].is_cuda
