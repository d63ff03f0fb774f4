"""The IDX format of MNIST and Fashion-MNIST, gzipped or not.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the
number of dimensions), one big-endian uint32 per dimension, then the data in
row-major order (LeCun, Cortes, Burges, "The MNIST database",
http://yann.lecun.com/exdb/mnist/, section "File formats").
A split is two files: ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte``
for training, ``t10k-...`` for test.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from .base import DataError, Dataset

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

NUM_CLASSES = 10


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_header(stream) -> tuple[np.dtype, tuple[int, ...]]:
    magic = stream.read(4)
    if len(magic) != 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES:
        raise DataError(f"not an IDX file (magic bytes {magic.hex()})")
    ndim = magic[3]
    dims = stream.read(4 * ndim)
    if len(dims) != 4 * ndim:
        raise DataError(f"IDX header announces {ndim} dimensions but is cut short")
    return _DTYPES[magic[2]], struct.unpack(f">{ndim}I", dims)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file, gzipped (``.gz``) or not, into an array of native byte order."""
    path = Path(path)
    try:
        with _open(path) as stream:
            dtype, shape = _read_header(stream)
            data = stream.read()
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    except (OSError, EOFError) as exc:  # gzip: bad magic, CRC error, truncated stream
        raise DataError(f"{path}: cannot read: {exc}") from None
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) != count * dtype.itemsize:
        raise DataError(f"{path}: header announces shape {shape} but the file holds "
                        f"{len(data)} bytes of data, expected {count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def idx_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape stored in an IDX file's header, without reading the data."""
    path = Path(path)
    try:
        with _open(path) as stream:
            return _read_header(stream)[1]
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None


def _find(root: Path, stem: str) -> Path:
    # The gzipped original, the unpacked file, and the "train-images.idx3-ubyte"
    # spelling some unpackers produce.
    for candidate in (root / f"{stem}.gz", root / stem, root / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    raise DataError(f"{root} has no file {stem}.gz or {stem}")


def split_files(root: Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) files of ``split`` in directory ``root``, or DataError naming what is missing."""
    if not root.is_dir():
        raise DataError(f"directory {root} does not exist")
    images, labels = STEMS[split]
    return _find(root, images), _find(root, labels)


def num_samples(root: Path, split: str) -> int:
    """Number of samples of a split, from the two headers only."""
    images, labels = split_files(root, split)
    n_images, n_labels = idx_shape(images)[0], idx_shape(labels)[0]
    if n_images != n_labels:
        raise DataError(f"{images} holds {n_images} images but {labels} holds {n_labels} labels")
    return n_images


def _checked_labels(path: Path) -> np.ndarray:
    labels = read_idx(path)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: expected a vector of integer labels, got {labels.dtype} "
                        f"of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels must lie in [0, {NUM_CLASSES}), found "
                        f"{int(labels.min())} .. {int(labels.max())}")
    return labels.astype(np.int64)


def labels(root: Path, split: str) -> np.ndarray:
    """The split's labels (N,) int64, reading only the labels file."""
    return _checked_labels(split_files(root, split)[1])


def load(root: Path, split: str, *, mean: tuple[float, ...], std: tuple[float, ...]) -> Dataset:
    """A split as uint8 images (N, 1, H, W) and int64 labels, 10 classes, with ``mean``/``std``."""
    images_path, labels_path = split_files(root, split)
    images, targets = read_idx(images_path), _checked_labels(labels_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} "
                        f"of shape {images.shape}")
    if images.ndim == 3:
        images = images[:, None, :, :]
    if len(images) != len(targets):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} "
                        f"holds {len(targets)} labels")
    return Dataset(images, targets, NUM_CLASSES, mean, std)
