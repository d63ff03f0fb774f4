"""Data sets, partitions across agents, and per-agent batch sampling.

Images are kept as uint8 until an agent's shard is turned into a normalized
float32 tensor once, at start-up; a batch is then one ``index_select``.

Data sets (``data.name`` in the config):

- ``mnist-small``: the built-in default, 6,000 training and 2,000 test digits
  drawn from MNIST, shipped inside the package in the original IDX format
  (see ``mpisim/datasets/mnist-small/README.md``); needs no download.
- ``mnist``: the full MNIST set, read from the standard IDX files (gzipped or
  not) in the directory ``data.root``.
- ``fashion-mnist``: the same format (Debian's ``dataset-fashion-mnist`` puts
  it in ``/usr/share/datasets/fashion-mnist``).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import seeding

BUILTIN_DIR = Path(__file__).resolve().parent

# Per-channel mean and standard deviation of the training images (scaled to
# [0, 1]) used to normalize inputs.
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "mnist-small": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}

# Where a named data set's files live when data.root is empty.
_DEFAULT_ROOTS = {
    "mnist-small": BUILTIN_DIR / "mnist-small",
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
}

DATASETS = tuple(_STATS)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataError(ValueError):
    """A data set that cannot be found or read."""


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_idx_header(stream) -> tuple[np.dtype, tuple[int, ...]]:
    magic = stream.read(4)
    if len(magic) != 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise DataError(f"not an IDX file (magic bytes {magic.hex()})")
    ndim = magic[3]
    shape = struct.unpack(f">{ndim}I", stream.read(4 * ndim))
    return _IDX_DTYPES[magic[2]], shape


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or not, into an array."""
    path = Path(path)
    with _open(path) as stream:
        dtype, shape = _read_idx_header(stream)
        count = int(np.prod(shape, dtype=np.int64))
        data = stream.read()
    if len(data) != count * dtype.itemsize:
        raise DataError(f"{path}: header announces shape {shape} but the file holds "
                        f"{len(data)} bytes of data, expected {count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def idx_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape stored in an IDX file's header, without reading the data."""
    with _open(Path(path)) as stream:
        return _read_idx_header(stream)[1]


def resolve_root(name: str, root: str | os.PathLike = "") -> Path:
    """The directory holding data set ``name``: ``root`` if given, else its default place."""
    if root:
        return Path(root).expanduser()
    if name in _DEFAULT_ROOTS:
        return _DEFAULT_ROOTS[name]
    raise DataError(f"data set {name!r} has no default location: set data.root to the "
                    f"directory holding its IDX files")


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem, root / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    raise DataError(f"{root} has no file {stem}.gz or {stem}")


def idx_files(name: str, root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """The (images, labels) IDX files of one split, or DataError naming what is missing."""
    base = resolve_root(name, root)
    if not base.is_dir():
        raise DataError(f"directory {base} does not exist")
    images, labels = _IDX_STEMS[split]
    return _find(base, images), _find(base, labels)


def num_samples(name: str, root: str | os.PathLike, split: str) -> int:
    """Number of samples of a split, read from the headers only (cheap, for validation)."""
    images, labels = idx_files(name, root, split)
    n_images, n_labels = idx_shape(images)[0], idx_shape(labels)[0]
    if n_images != n_labels:
        raise DataError(f"{images} holds {n_images} images but {labels} holds {n_labels} labels")
    return n_images


@dataclass(frozen=True)
class ArrayDataset:
    """Images (N, C, H, W) uint8 and labels (N,) int64, with normalization constants."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def tensors(self, index: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized float32 images (channels-last memory) and int64 labels."""
        images = self.images if index is None else self.images[index]
        labels = self.labels if index is None else self.labels[index]
        return self.normalize(torch.from_numpy(np.array(images))), torch.from_numpy(np.array(labels))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.mean, self.std)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 images (k, C, H, W) -> float32 ((x / 255) - mean) / std, channels-last memory."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = images.to(torch.float32).div_(255.0).sub_(mean_t).div_(std_t)
    return x.contiguous(memory_format=torch.channels_last)


def load(name: str, root: str | os.PathLike, split: str) -> ArrayDataset:
    """Load split ``train`` or ``test`` of data set ``name`` (see the module docstring)."""
    if name not in _STATS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    images_path, labels_path = idx_files(name, root, split)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim == 3:
        images = images[:, None, :, :]
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} "
                        f"holds {len(labels)} labels")
    mean, std = _STATS[name]
    return ArrayDataset(images, labels.astype(np.int64), 10, mean, std)


def iid_partition(num_samples: int, num_agents: int, seed: int, *, subset: int = 0) -> list[np.ndarray]:
    """Split ``range(num_samples)`` into ``num_agents`` shards of (near) equal size.

    A seeded permutation is cut into contiguous pieces (sizes differ by at most
    one); each shard's indices are sorted. With ``subset`` > 0, only the first
    ``subset`` indices of the permutation are shared out (a seeded random
    subset of the training set). The same on every rank.
    """
    total = subset or num_samples
    if total > num_samples:
        raise DataError(f"a subset of {subset} samples is larger than the {num_samples} available")
    if total < num_agents:
        raise DataError(f"{total} samples cannot give each of {num_agents} agents a shard")
    perm = seeding.numpy_generator(seed, seeding.PARTITION).permutation(num_samples)[:total]
    return [np.sort(part) for part in np.array_split(perm, num_agents)]


class AgentData:
    """One agent's shard, and its batch sampler.

    ``batch()`` draws k indices i.i.d. uniformly from the shard (with
    replacement), which is the CGE paper's eq (8): k points sampled i.i.d.
    from the agent's data distribution, here the shard's empirical one.
    The sampler's stream depends only on (seed, agent id). The shard stays
    uint8 in memory (a quarter of float32); a batch is normalized when drawn.
    """

    def __init__(self, dataset: ArrayDataset, shard: np.ndarray, *, agent_id: int, seed: int,
                 batch_size: int):
        self.mean, self.std = dataset.mean, dataset.std
        self.images = torch.from_numpy(dataset.images[shard])
        self.labels = torch.from_numpy(dataset.labels[shard])
        self.batch_size = batch_size
        self.rng = seeding.numpy_generator(seed, seeding.SAMPLING, agent_id)

    def __len__(self) -> int:
        return len(self.labels)

    def all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole shard as one batch (full local gradient, BRIDGE's grad f_j)."""
        return normalize(self.images, self.mean, self.std), self.labels

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(self.rng.integers(0, len(self.labels), self.batch_size))
        return (normalize(self.images.index_select(0, idx), self.mean, self.std),
                self.labels.index_select(0, idx))
