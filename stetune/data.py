"""Datasets as whole tensors on the device, plus batched augmentation and index batching.

Everything fits in (GPU) memory, so, airbench style, there is no DataLoader: a dataset is loaded once,
normalised, moved to the device, and training indexes into it with shuffled index batches.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .registry import Registry

__all__ = ["Dataset", "DatasetInfo", "DatasetNotFoundError", "register_dataset", "list_datasets",
           "dataset_info", "load_dataset", "augment_batch", "batch_indices"]

DEFAULT_DATA_DIR = "~/.cache/stetune/data"
SYSTEM_DATASETS = "/usr/share/datasets"  # where Debian's dataset-* packages install

_IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # float32 (N, C, H, W), normalised with the train split's per-channel mean/std
    y_train: torch.Tensor  # int64 (N,)
    x_val: torch.Tensor  # the official test split ("val" everywhere in stetune)
    y_val: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int
    augment: bool  # train with random crop + flip (augment_batch)


class DatasetNotFoundError(FileNotFoundError):
    """The data is not on disk and could not be downloaded; the message says where we looked and how to get it."""


# -----------------------------------------------------------------------------
# registry: each loader registers with its metadata; load_dataset is the only door


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    loader: Callable  # (root: Path, download: bool, seed: int) -> (x_train, y_train, x_val, y_val)
    num_classes: int  # declared, not inferred from labels, which `limit` may thin out
    input_size: tuple[int, int, int]  # (C, H, W) of an example
    augment: bool = False  # train with random crop + flip (augment_batch)
    title: str = ""  # display name (tables, help)


_DATASETS: Registry[DatasetInfo] = Registry("dataset")


def register_dataset(name: str, *, num_classes: int, input_size: tuple[int, int, int],
                     augment: bool = False, title: str = ""):
    """Decorator: register `loader(root, download, seed)`, which returns (x_train, y_train, x_val,
    y_val) with x uint8 or float in [0, 1] shaped (N, C, H, W), under `name` with its metadata."""
    def wrap(loader: Callable) -> Callable:
        _DATASETS.add(name, DatasetInfo(name, loader, num_classes, tuple(input_size), augment,
                                        title), source=loader)
        return loader
    return wrap


def list_datasets() -> tuple[str, ...]:
    return _DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    return _DATASETS.get(name)


# -----------------------------------------------------------------------------
# file formats


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (the MNIST format), gzipped or not: magic 0 0 <dtype> <ndim>, big-endian u32 dims, data."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"IDX magic must be 00 00 <dtype> <ndim>, but got {raw[:4]!r} in {path}")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype, offset=4 + 4 * ndim)
    if data.size != np.prod(dims):
        raise ValueError(f"IDX data must hold prod({dims=}) values, but got {data.size=} in {path}")
    return data.reshape(dims).astype(dtype.newbyteorder("="))  # native byte order, and a writable copy


def _find_idx(folder: Path) -> list[Path] | None:
    """The four IDX files in `folder` (each .gz or uncompressed), or None if any is missing."""
    found = []
    for name in _IDX_NAMES:
        path = next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: a CIFAR batch is a pickle, and any other
    global (os.system, ...) in one is refused rather than called."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        try:  # the real files are python 2 pickles; latin1 as in torchvision
            entry = _ArrayUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"CIFAR-10 batch {str(path)!r} must be a pickled dict of numpy arrays, "
                             f"but reading it failed: {e}") from None
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}  # b"data" or "data"
    return np.asarray(entry["data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(entry["labels"], np.int64)


# -----------------------------------------------------------------------------
# loaders: each returns (x_train, y_train, x_val, y_val) with x uint8 or float in [0, 1], shaped (N, C, H, W)


def _torchvision(name: str, cls_name: str, root: Path, download: bool, how_to_get: str):
    import torchvision  # imported here: only these loaders need it, and it is slow to import

    cls = getattr(torchvision.datasets, cls_name)
    try:
        splits = [cls(str(root), train=train, download=download) for train in (True, False)]
    except (RuntimeError, OSError) as e:  # "Dataset not found", or offline (URLError is an OSError)
        where = root / cls_name / "raw"
        raise DatasetNotFoundError(
            f"dataset {name!r} not found in {where} ({download=}; torchvision said: {e}). {how_to_get}"
        ) from e
    (x_tr, y_tr), (x_va, y_va) = [(ds.data.unsqueeze(1), ds.targets.long()) for ds in splits]
    return x_tr, y_tr, x_va, y_va


@register_dataset("mnist", num_classes=10, input_size=(1, 28, 28), title="MNIST")
def _mnist(root: Path, download: bool, seed: int):
    how = (f"To get it: run once with network access (download=True), or copy the uncompressed torchvision "
           f"'MNIST/raw' files ({', '.join(_IDX_NAMES)}) into {root / 'MNIST' / 'raw'}.")
    return _torchvision("mnist", "MNIST", root, download, how)


@register_dataset("fashion-mnist", num_classes=10, input_size=(1, 28, 28), title="Fashion-MNIST")
def _fashion_mnist(root: Path, download: bool, seed: int):
    # Prefer IDX files already on disk (e.g. Debian's dataset-fashion-mnist) over torchvision's download.
    system = os.environ.get("STETUNE_SYSTEM_DATASETS", SYSTEM_DATASETS)
    places = [root / "fashion-mnist", root, root / "FashionMNIST" / "raw"]
    places += [Path(d) / "fashion-mnist" for d in system.split(os.pathsep) if d]
    for place in places:
        if (paths := _find_idx(place)) is not None:
            x_tr, y_tr, x_va, y_va = (torch.from_numpy(_read_idx(p)) for p in paths)
            return x_tr.unsqueeze(1), y_tr.long(), x_va.unsqueeze(1), y_va.long()
    how = (f"Looked for the four IDX files ({', '.join(_IDX_NAMES)}, .gz or not) in: "
           f"{', '.join(map(str, places))}. To get them: `apt-get install dataset-fashion-mnist`, "
           f"copy them into {root / 'fashion-mnist'}, or run once with network access (download=True).")
    return _torchvision("fashion-mnist", "FashionMNIST", root, download, how)


@register_dataset("cifar10", num_classes=10, input_size=(3, 32, 32), augment=True, title="CIFAR-10")
def _cifar10(root: Path, download: bool, seed: int):
    # Read the pickles ourselves: torchvision's CIFAR10 md5-checks every file, so it serves only to download them.
    folder = root / "cifar-10-batches-py"
    how = (f"To get it: run once with network access (download=True), "
           f"or extract cifar-10-python.tar.gz into {root}.")
    if download and not all((folder / b).is_file() for b in _CIFAR_BATCHES):
        import torchvision

        try:
            torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        except (RuntimeError, OSError) as e:  # offline (URLError is an OSError), or a corrupt archive
            raise DatasetNotFoundError(
                f"dataset 'cifar10' not found in {folder}, and the download failed ({e}). {how}") from e
    if missing := [b for b in _CIFAR_BATCHES if not (folder / b).is_file()]:
        raise DatasetNotFoundError(f"dataset 'cifar10' not found: {folder} lacks {missing} ({download=}). {how}")
    train = [_read_cifar_batch(folder / b) for b in _CIFAR_BATCHES[:-1]]
    x_va, y_va = _read_cifar_batch(folder / _CIFAR_BATCHES[-1])
    x_tr, y_tr = np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])
    return tuple(torch.from_numpy(a) for a in (x_tr, y_tr, x_va, y_va))


@register_dataset("digits", num_classes=10, input_size=(1, 28, 28), title="digits")
def _digits(root: Path, download: bool, seed: int):
    from sklearn.datasets import load_digits  # bundled with scikit-learn: never downloads

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # values 0..16 -> [0, 1]
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)  # MNIST-sized, so MNIST models fit
    y = torch.from_numpy(digits.target).long()
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    tr, va = perm[:1437], perm[1437:]  # 1437 / 360
    return x[tr], y[tr], x[va], y[va]


@register_dataset("synthetic", num_classes=10, input_size=(1, 28, 28), title="synthetic")
def _synthetic(root: Path, download: bool, seed: int, n_train: int = 512, n_val: int = 128):
    # Each class is a smooth random pattern (upsampled 7x7 noise) around grey; examples add pixel noise.
    # The low pattern contrast keeps it learnable but not trivial (a linear model gets roughly 90%, not 100%).
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(10, 1, 7, 7, generator=g)
    protos = 0.5 + 0.25 * (F.interpolate(noise, size=(28, 28), mode="bilinear", align_corners=False) - 0.5)
    y = torch.randint(0, 10, (n_train + n_val,), generator=g)
    x = (protos[y] + 0.3 * torch.randn(len(y), 1, 28, 28, generator=g)).clamp_(0, 1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


# -----------------------------------------------------------------------------
# public API


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 download: bool | None = None, limit: int | None = None, seed: int = 0) -> Dataset:
    """Load `name` as normalised tensors on `device`. `limit` keeps the first `limit` train and val examples.
    `download=None` downloads missing torchvision data unless the environment sets STETUNE_OFFLINE=1."""
    info = dataset_info(name)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be None or >= 1, but got {limit=}")
    if data_dir is None:
        data_dir = os.environ.get("STETUNE_DATA") or DEFAULT_DATA_DIR
    if download is None:
        download = os.environ.get("STETUNE_OFFLINE") != "1"
    x_tr, y_tr, x_va, y_va = info.loader(Path(data_dir).expanduser(), download, seed)

    if tuple(x_tr.shape[1:]) != info.input_size:
        raise ValueError(f"dataset {name!r} must give examples of its registered input_size "
                         f"{info.input_size}, but got {tuple(x_tr.shape[1:])}")

    # slice before converting, so a quick run never materialises the full float copy
    x_tr, y_tr, x_va, y_va = (t[:limit] for t in (x_tr, y_tr, x_va, y_va))
    x_tr, x_va = ((x.float().div(255) if x.dtype == torch.uint8 else x.float()) for x in (x_tr, x_va))

    # per-channel statistics of the train split only, so val never leaks into the preprocessing
    mean = x_tr.mean(dim=(0, 2, 3), keepdim=True)
    std = x_tr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)  # a constant channel (tiny `limit`) must not give NaN
    x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std

    x_tr, y_tr, x_va, y_va = (t.contiguous().to(device) for t in (x_tr, y_tr, x_va, y_va))
    return Dataset(name=name, x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va, num_classes=info.num_classes,
                   in_channels=x_tr.shape[1], image_size=x_tr.shape[-1], augment=info.augment)


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding of `pad`) and random horizontal flip, per image, in one gather on x's device."""
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), but got {x.shape=}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, but got {pad=}")
    n, c, h, w = x.shape
    # draw on the generator's device (it may be a CPU generator for CUDA data), then move
    gen_device = generator.device if generator is not None else x.device
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator, device=gen_device).to(x.device)
    flip = (torch.rand(n, 1, generator=generator, device=gen_device) < 0.5).to(x.device)

    # output pixel (i, j) of image k reads padded pixel (dy_k + i, dx_k + j), or column dx_k + w-1-j when flipped
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = dy + torch.arange(h, device=x.device)  # (n, h)
    cols_ar = torch.arange(w, device=x.device)
    cols = dx + torch.where(flip, w - 1 - cols_ar, cols_ar)  # (n, w)
    k = torch.arange(n, device=x.device)[:, None, None, None]
    ch = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[k, ch, rows[:, None, :, None], cols[:, None, None, :]]


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None, shuffle: bool = True,
                  drop_last: bool = False, device: str | torch.device | None = None) -> list[torch.Tensor]:
    """Index batches covering range(n): a permutation from `generator` (or in order), split into batch_size chunks."""
    if n < 0:
        raise ValueError(f"n must be >= 0, but got {n=}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, but got {batch_size=}")
    gen_device = generator.device if generator is not None else device
    order = torch.randperm(n, generator=generator, device=gen_device) if shuffle else torch.arange(n, device=gen_device)
    batches = list(order.to(device).split(batch_size)) if n else []
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches
