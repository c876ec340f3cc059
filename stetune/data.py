"""Datasets as whole tensors on the device, plus batched augmentation and index batching.

Everything fits in (GPU) memory, so, airbench style, there is no DataLoader: a dataset is loaded once,
normalised, moved to the device, and training indexes into it with shuffled index batches.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .registry import Registry

__all__ = ["Dataset", "DatasetInfo", "DatasetNotFoundError", "DatasetError", "register_dataset", "list_datasets",
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


class DatasetError(ValueError):
    """The data is on disk but unusable (truncated, not the format, wrong shapes or labels); the
    one-line message names the file (or dataset), what is wrong, and what to do."""


# a partial download or a stray file is the usual cause, and a fresh copy the cure
_FIX = "a corrupt or partial file: delete it, then download it again or copy in a good one"


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
    """Parse an IDX file (the MNIST format), gzipped or not: magic 0 0 <dtype> <ndim>, big-endian u32 dims, data.
    Anything that is not exactly that is a DatasetError naming the file."""
    path = Path(path)

    def bad(what: str) -> DatasetError:
        return DatasetError(f"IDX file {str(path)!r} must {what} ({_FIX})")

    gz = path.name.endswith(".gz")
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut-off .gz is an EOFError
        raise bad(f"be a readable {'gzip' if gz else 'IDX'} file, but reading it failed: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or not 1 <= raw[3] <= 3:
        raise bad(f"start with magic 00 00 <dtype> <ndim 1..3>, but got magic={raw[:4].hex(' ')!r}")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise bad(f"hold {ndim} u32 dims after the magic, but got {len(raw)} bytes in all")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    size = len(raw) - 4 - 4 * ndim
    if size != math.prod(dims) * dtype.itemsize:  # Python ints: huge garbage dims cannot overflow
        raise bad(f"hold exactly prod({dims=}) x {dtype.itemsize} data bytes, but got {size} bytes")
    data = np.frombuffer(raw, dtype, offset=4 + 4 * ndim)
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


def _idx_dataset(name: str, paths: list[Path]) -> tuple[torch.Tensor, ...]:
    """The four IDX files of `name` as (x_train, y_train, x_val, y_val), each checked against its
    role here, so that an error names the file (load_dataset's checks can name only the dataset)."""
    info = dataset_info(name)
    hw = info.input_size[1:]
    arrays = [_read_idx(p) for p in paths]
    for (x, x_path), (y, y_path) in [tuple(zip(arrays[i:i + 2], paths[i:i + 2])) for i in (0, 2)]:
        if x.dtype != np.uint8 or x.shape[1:] != hw or len(x) == 0:
            raise DatasetError(f"IDX images {str(x_path)!r} must be uint8 (N >= 1, {hw[0]}, {hw[1]}) for "
                               f"{name!r}, but got shape={x.shape} dtype={x.dtype.name} ({_FIX})")
        if y.dtype.kind not in "iu" or y.shape != (len(x),):
            raise DatasetError(f"IDX labels {str(y_path)!r} must be integers of shape ({len(x)},), one per "
                               f"image in {x_path.name}, but got shape={y.shape} dtype={y.dtype.name} ({_FIX})")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= info.num_classes:
            raise DatasetError(f"IDX labels {str(y_path)!r} must be in [0, {info.num_classes}) for "
                               f"{name!r}, but got labels in [{lo}, {hi}] ({_FIX})")
    x_tr, y_tr, x_va, y_va = (torch.from_numpy(a) for a in arrays)
    return x_tr.unsqueeze(1), y_tr.long(), x_va.unsqueeze(1), y_va.long()


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
    def bad(what: str) -> DatasetError:
        return DatasetError(f"CIFAR-10 batch {str(path)!r} must {what} ({_FIX})")

    with open(path, "rb") as f:
        try:  # the real files are python 2 pickles; latin1 as in torchvision
            entry = _ArrayUnpickler(f, encoding="latin1").load()
        # what unpickling garbage raises (random bytes can claim huge sizes: Overflow, Memory)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError,
                IndexError, OverflowError, MemoryError) as e:
            raise bad(f"be a pickled dict of numpy arrays, but reading it failed: {e}") from None
    if not isinstance(entry, dict):
        raise bad(f"be a pickled dict, but got a {type(entry).__name__}")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}  # b"data" or "data"
    if missing := sorted({"data", "labels"} - entry.keys()):
        raise bad(f"hold 'data' and 'labels', but got no {missing}")
    try:
        x, y = np.asarray(entry["data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(entry["labels"], np.int64)
    except (ValueError, TypeError, OverflowError) as e:
        raise bad(f"hold uint8 'data' of N x 3072 and integer 'labels', but {e}") from None
    if y.shape != (len(x),):
        raise bad(f"hold one label per image, but got {len(x)} images and labels of shape {y.shape}")
    return x, y


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
    # Read IDX files already on disk ourselves: torchvision's reader asserts (a traceback) on a garbage file.
    raw = root / "MNIST" / "raw"
    if (paths := _find_idx(raw)) is not None:
        return _idx_dataset("mnist", paths)
    how = (f"To get it: run once with network access (download=True), or copy the torchvision 'MNIST/raw' "
           f"files ({', '.join(_IDX_NAMES)}, .gz or not) into {raw}.")
    return _torchvision("mnist", "MNIST", root, download, how)


@register_dataset("fashion-mnist", num_classes=10, input_size=(1, 28, 28), title="Fashion-MNIST")
def _fashion_mnist(root: Path, download: bool, seed: int):
    # Prefer IDX files already on disk (e.g. Debian's dataset-fashion-mnist) over torchvision's download.
    system = os.environ.get("STETUNE_SYSTEM_DATASETS", SYSTEM_DATASETS)
    places = [root / "fashion-mnist", root, root / "FashionMNIST" / "raw"]
    places += [Path(d) / "fashion-mnist" for d in system.split(os.pathsep) if d]
    for place in places:
        if (paths := _find_idx(place)) is not None:
            return _idx_dataset("fashion-mnist", paths)
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


_LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_split(info: DatasetInfo, split: str, x, y) -> None:
    """Every loader's output checked alike, so a bad file or plug-in is one DatasetError naming the
    dataset here, not a shape or index error deep inside training (or a silently wrong run)."""
    def bad(what: str) -> DatasetError:
        return DatasetError(f"dataset {info.name!r} must give {what} (check its files, or its loader)")

    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise bad(f"{split} images and labels as tensors, but got {type(x).__name__}, {type(y).__name__}")
    if tuple(x.shape[1:]) != info.input_size or not (x.dtype == torch.uint8 or x.is_floating_point()):
        raise bad(f"uint8 or float {split} examples of its registered input_size {info.input_size}, "
                  f"but got shape={tuple(x.shape)} dtype={x.dtype}")
    if len(x) == 0:
        raise bad(f"a non-empty {split} split, but got 0 {split} examples")
    if y.dtype not in _LABEL_DTYPES or tuple(y.shape) != (len(x),):
        raise bad(f"1-D integer {split} labels, one per example, but got shape={tuple(y.shape)} "
                  f"dtype={y.dtype} for {len(x)} examples")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= info.num_classes:
        raise bad(f"{split} labels in [0, {info.num_classes}), but got labels in [{lo}, {hi}]")


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

    for split, x, y in (("train", x_tr, y_tr), ("val", x_va, y_va)):
        _check_split(info, split, x, y)

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
