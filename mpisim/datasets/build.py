"""Rebuild the built-in ``mnist-small`` data set from the original MNIST files.

    python -m mpisim.datasets.build ../shared/data/mnist [OUT_DIR]

It takes a seeded random subset (6,000 of the 60,000 training digits and
2,000 of the 10,000 test digits, in their original order) and writes it in
the original IDX format, gzipped with a fixed timestamp so that the output is
byte-for-byte reproducible.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np

from mpisim import datasets as data

TRAIN_SIZE = 6000
TEST_SIZE = 2000
SUBSET_SEED = 20201214  # fixed; changing it changes the shipped data set


def subset_indices(total: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``range(total)``."""
    return np.sort(np.random.default_rng(seed).choice(total, size, replace=False))


def _idx_bytes(array: np.ndarray) -> bytes:
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def build(source: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for split, size, salt in (("train", TRAIN_SIZE, 0), ("test", TEST_SIZE, 1)):
        images_path, labels_path = data.idx_files("mnist", source, split)
        images, labels = data.read_idx(images_path), data.read_idx(labels_path)
        keep = subset_indices(len(labels), size, SUBSET_SEED + salt)
        for path, array in ((images_path, images[keep]), (labels_path, labels[keep])):
            stem = path.name.removesuffix(".gz")
            with open(out / f"{stem}.gz", "wb") as raw:
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as stream:
                    stream.write(_idx_bytes(array))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.exit(__doc__)
    out = Path(argv[1]) if len(argv) > 1 else data.BUILTIN_DIR / "mnist-small"
    build(Path(argv[0]), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
