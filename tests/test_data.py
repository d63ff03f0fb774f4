"""Data: the IDX reader, the built-in set, partitions and per-agent sampling."""

import gzip
import struct

import numpy as np
import pytest

from mpisim import datasets as data
from mpisim.datasets import build


def write_idx(path, array, code=0x08, compress=False):
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as stream:
        stream.write(body)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips_uint8_and_float(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    floats = np.array([[1.5, -2.0], [3.25, 0.0]], dtype=np.float32)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"a{suffix}", images, 0x08, compress)
    write_idx(tmp_path / f"b{suffix}", floats, 0x0D, compress)

    got_images = data.read_idx(tmp_path / f"a{suffix}")
    got_floats = data.read_idx(tmp_path / f"b{suffix}")

    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_floats, floats)
    assert got_floats.dtype == np.float32 and got_floats.dtype.isnative
    assert data.idx_shape(tmp_path / f"a{suffix}") == (2, 3, 4)


def test_read_idx_rejects_bad_magic_and_short_data(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04" + b"\0" * 8)
    write_idx(tmp_path / "short", np.zeros((4, 4), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])

    with pytest.raises(data.DataError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad")
    with pytest.raises(data.DataError, match="expected 16"):
        data.read_idx(tmp_path / "short")


def test_load_reads_uncompressed_files_from_any_directory(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 9, 4], dtype=np.uint8)
    for split, (img, lab) in {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}.items():
        write_idx(tmp_path / img, images)
        write_idx(tmp_path / lab, labels)

    ds = data.load("mnist", tmp_path, "train")

    assert ds.images.shape == (5, 1, 28, 28) and ds.labels.tolist() == [0, 1, 2, 9, 4]
    assert data.num_samples("mnist", tmp_path, "test") == 5
    x, y = ds.tensors(np.array([3]))
    expected = (images[3].astype(np.float32) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(x[0, 0].numpy(), expected, rtol=1e-6)
    assert y.tolist() == [9]


def test_missing_directory_and_files_are_named(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.idx_files("mnist", tmp_path / "nowhere", "train")
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte"):
        data.idx_files("mnist", tmp_path, "train")
    with pytest.raises(data.DataError, match="set data.root"):
        data.resolve_root("mnist", "")


def test_builtin_set_loads_with_all_ten_classes():
    train = data.load("mnist-small", "", "train")
    test = data.load("mnist-small", "", "test")

    assert train.images.shape == (6000, 1, 28, 28) and test.images.shape == (2000, 1, 28, 28)
    assert np.bincount(train.labels, minlength=10).min() > 500
    assert set(test.labels.tolist()) == set(range(10))


def test_builtin_set_is_the_documented_subset_of_mnist(mnist_dir, tmp_path):
    build.build(mnist_dir, tmp_path)

    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                 "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        shipped = (data.BUILTIN_DIR / "mnist-small" / name).read_bytes()
        assert (tmp_path / name).read_bytes() == shipped, name
    full = data.load("mnist", mnist_dir, "train")
    small = data.load("mnist-small", "", "train")
    keep = build.subset_indices(60000, 6000, build.SUBSET_SEED)
    np.testing.assert_array_equal(full.images[keep], small.images)


def test_iid_partition_covers_every_sample_once_and_is_seeded():
    shards = data.iid_partition(103, 10, seed=7)

    sizes = sorted(len(s) for s in shards)
    assert sizes[0] == 10 and sizes[-1] == 11
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(103))
    again = data.iid_partition(103, 10, seed=7)
    other = data.iid_partition(103, 10, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))
    assert not all(np.array_equal(a, b) for a, b in zip(shards, other))
    with pytest.raises(data.DataError, match="3 samples cannot"):
        data.iid_partition(3, 4, seed=0)


def test_agent_batches_come_from_its_shard_and_depend_only_on_seed_and_id():
    ds = data.load("mnist-small", "", "test")
    shard = np.arange(100, 150)
    first = data.AgentData(ds, shard, agent_id=3, seed=1, batch_size=16)
    twin = data.AgentData(ds, shard, agent_id=3, seed=1, batch_size=16)
    other = data.AgentData(ds, shard, agent_id=4, seed=1, batch_size=16)

    x1, y1 = first.batch()
    x2, y2 = twin.batch()
    x3, _ = other.batch()

    assert x1.shape == (16, 1, 28, 28) and y1.shape == (16,)
    assert (x1 == x2).all() and (y1 == y2).all()
    assert not (x1 == x3).all()
    shard_labels = set(ds.labels[shard].tolist())
    assert set(y1.tolist()) <= shard_labels
