"""CIFAR-10 from its original python-pickle batches.

The "python version" of CIFAR-10 (Krizhevsky, "Learning Multiple Layers of
Features from Tiny Images", 2009; https://www.cs.toronto.edu/~kriz/cifar.html)
is a folder ``cifar-10-batches-py`` with five training batches
``data_batch_1`` .. ``data_batch_5`` and one ``test_batch``, 10,000 images
each. Every batch is a pickled dict (written by Python 2, so its keys are
byte strings) with

- ``b"data"``: uint8 array (k, 3072); a row is one 32x32 colour image in
  channel-major order: 1024 red values, then 1024 green, then 1024 blue,
  each channel row-major (so ``reshape(k, 3, 32, 32)`` gives N, C, H, W);
- ``b"labels"``: k ints in [0, 10);
- ``b"batch_label"`` and ``b"filenames"``, unused here.

Batches are unpickled by :class:`BatchUnpickler`, which refuses every
global except the few needed to rebuild a numpy array and a byte string:
a data file can describe data but can never run code.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np

from .base import DataError, Dataset

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
NUM_CLASSES = 10
SIDE = 32
ROW = 3 * SIDE * SIDE

# Per-channel mean and (population) standard deviation of the pixel values,
# scaled to [0, 1], over all 50,000 training images: the true statistics of
# the training set. (The (0.2023, 0.1994, 0.2010) often copied as CIFAR-10's
# std are not the standard deviation of the training pixels.)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def _reconstruct():
    # numpy >= 2 moved the module to numpy._core; numpy.core still exists
    # there as a shim that warns, so take the function from where it lives.
    try:
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


def _latin1_encode(text, encoding="utf-8"):
    # Python 3 writes bytes into protocol-2 pickles as
    # _codecs.encode(text, "latin1"); only that harmless use is let through.
    if codecs.lookup(encoding).name != "iso8859-1":
        raise DataError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


class BatchUnpickler(pickle.Unpickler):
    """A pickle reader that rebuilds dicts, lists, numbers, strings and numpy arrays, and nothing else.

    ``find_class`` is the only way a pickle reaches code; here it resolves

    - numpy's ``_reconstruct`` (under ``numpy.core.multiarray``, as written by
      numpy 1 and by the original files, or ``numpy._core.multiarray``, as
      written by numpy 2), ``numpy.ndarray`` and ``numpy.dtype``: what an
      ndarray's pickle calls;
    - ``_codecs.encode`` with the latin-1 codec only: how Python 3 stores a
      bytes object in a protocol-2 pickle (the original Python 2 files do
      not need it, copies re-saved by Python 3 do);

    and raises DataError for any other global (``os.system``,
    ``builtins.eval``, ...), so that loading a data file never runs
    arbitrary code.
    """

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise DataError(f"refusing to load global {module}.{name}: a CIFAR-10 batch holds "
                        f"only numpy arrays, lists and strings")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as (images (k, 3, 32, 32) uint8, labels (k,) int64); DataError naming the file."""
    try:
        with open(path, "rb") as stream:
            entry = BatchUnpickler(stream, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist (python -m mpisim.datasets.fetch cifar10 DIR "
                        f"downloads the original batches)") from None
    except DataError as exc:  # refused by BatchUnpickler
        raise DataError(f"{path}: {exc}") from None
    except Exception as exc:  # a broken pickle can fail in many ways: report them all alike
        raise DataError(f"{path}: not a readable CIFAR-10 batch: {exc}") from None
    if not isinstance(entry, dict) or b"data" not in entry or b"labels" not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise DataError(f"{path}: expected a dict with keys b'data' and b'labels', got {keys}")
    data, labels = entry[b"data"], entry[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (k, {ROW}), got "
                        f"{getattr(data, 'dtype', type(data).__name__)} of shape {shape}")
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or (len(labels) and labels.dtype.kind not in "iu"):
        raise DataError(f"{path}: b'labels' must hold {len(data)} integers, got "
                        f"{labels.dtype} of shape {labels.shape}")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels must lie in [0, {NUM_CLASSES}), found "
                        f"{int(labels.min())} .. {int(labels.max())}")
    return data.reshape(len(data), 3, SIDE, SIDE), labels


def batch_dir(root: Path) -> Path:
    """The folder holding the batches: ``root`` itself, or ``root/cifar-10-batches-py``."""
    nested = root / FOLDER
    if nested.is_dir():
        return nested
    if not root.is_dir():
        raise DataError(f"directory {root} does not exist")
    return root


def _batches(split: str) -> tuple[str, ...]:
    return TRAIN_BATCHES if split == "train" else TEST_BATCHES


def load(root: Path, split: str) -> Dataset:
    """The training split (the five data batches, in order) or the test split (test_batch)."""
    folder = batch_dir(root)
    parts = [read_batch(folder / name) for name in _batches(split)]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    return Dataset(images, labels, NUM_CLASSES, MEAN, STD)


def labels(root: Path, split: str) -> np.ndarray:
    """The split's labels (reads the whole batches: a pickle cannot be read in part)."""
    folder = batch_dir(root)
    return np.concatenate([read_batch(folder / name)[1] for name in _batches(split)])


def num_samples(root: Path, split: str) -> int:
    """The number of images of a split (reads the batches, see :func:`labels`)."""
    return len(labels(root, split))
