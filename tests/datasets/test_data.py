"""Data: the IDX reader, the built-in set, the registry, the Dataset class and the sampler."""

import gzip
import json
import pickle
import struct
from types import MappingProxyType

import numpy as np
import pytest
import torch

from mpisim import datasets as data
from mpisim import registry
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
    for _split, (img, lab) in {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}.items():
        write_idx(tmp_path / img, images)
        write_idx(tmp_path / lab, labels)

    ds = data.load("mnist", tmp_path, "train")

    assert ds.inputs.shape == (5, 1, 28, 28) and ds.targets.tolist() == [0, 1, 2, 9, 4]
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

    assert train.inputs.shape == (6000, 1, 28, 28) and test.inputs.shape == (2000, 1, 28, 28)
    assert np.bincount(train.targets, minlength=10).min() > 500
    assert set(test.targets.tolist()) == set(range(10))


def test_builtin_set_is_the_documented_subset_of_mnist(mnist_dir, tmp_path):
    build.build(mnist_dir, tmp_path)

    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                 "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        shipped = (data.BUILTIN_DIR / "mnist-small" / name).read_bytes()
        assert (tmp_path / name).read_bytes() == shipped, name
    full = data.load("mnist", mnist_dir, "train")
    small = data.load("mnist-small", "", "train")
    keep = build.subset_indices(60000, 6000, build.SUBSET_SEED)
    np.testing.assert_array_equal(full.inputs[keep], small.inputs)


def iid(num_samples, num_agents, seed):
    return data.partition.partition("iid", num_samples=num_samples, labels=None, num_agents=num_agents,
                                    seed=seed).shards


def test_iid_partition_covers_every_sample_once_and_is_seeded():
    shards = iid(103, 10, seed=7)

    sizes = sorted(len(s) for s in shards)
    assert sizes[0] == 10 and sizes[-1] == 11
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(103))
    again = iid(103, 10, seed=7)
    other = iid(103, 10, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))
    assert not all(np.array_equal(a, b) for a, b in zip(shards, other))
    with pytest.raises(data.DataError, match="3 samples cannot"):
        iid(3, 4, seed=0)


def test_agent_batches_come_from_its_shard_and_depend_only_on_seed_and_id():
    ds = data.load("mnist-small", "", "test")
    shard = np.arange(100, 150)
    first = data.Sampler(ds, shard, agent_id=3, seed=1, batch_size=16)
    twin = data.Sampler(ds, shard, agent_id=3, seed=1, batch_size=16)
    other = data.Sampler(ds, shard, agent_id=4, seed=1, batch_size=16)

    x1, y1 = first.batch()
    x2, y2 = twin.batch()
    x3, _ = other.batch()

    assert x1.shape == (16, 1, 28, 28) and y1.shape == (16,)
    assert (x1 == x2).all() and (y1 == y2).all()
    assert not (x1 == x3).all()
    shard_labels = set(ds.targets[shard].tolist())
    assert set(y1.tolist()) <= shard_labels


# ---------------------------------------------------------------- registry and Dataset


def test_registry_describes_every_set():
    # data.REGISTRY is the one registry's view: name -> Spec, the Entry beside it.
    assert data.REGISTRY is registry.datasets
    assert {e.name for e in registry.datasets.entries() if e.origin == "mpisim"} == {
        "mnist", "mnist-small", "fashion-mnist", "cifar10", "synthetic_regression"}
    for name, spec in data.REGISTRY.items():
        entry = registry.datasets.entry(name)
        assert spec.name == name and spec.kind in ("classification", "regression") and spec.description
        assert entry.obj is spec and entry.kind == "dataset" and entry.description == spec.description
        assert entry.params == spec.params and entry.check is spec.check and entry.reference
        assert entry.properties == {"kind": spec.kind, "needs_root": spec.needs_root,
                                    "default_root": spec.default_root}
    assert data.REGISTRY["mnist-small"].default_root == data.BUILTIN_DIR / "mnist-small"
    assert data.REGISTRY["mnist"].default_root is None and data.REGISTRY["mnist"].needs_root
    assert not data.REGISTRY["synthetic_regression"].needs_root
    assert registry.datasets.entry("synthetic_regression").params == {
        "samples": 4000, "dim": 1000, "noise": 0.0, "test_samples": 1000}


def test_a_spec_without_counters_loads_to_count_and_its_loader_is_held_to_its_kind():
    rows = {"train": 7, "test": 3}

    def load(root, split, params, seed):
        targets = np.arange(rows[split]) % 2
        return data.Dataset(np.zeros((rows[split], 2), np.float32), targets.astype(np.int64), 2, None, None)

    spec = data.Spec(name="two_t", kind="classification", description="two", load=load)
    wrong = data.Spec(name="wrong_t", kind="regression", description="a liar", load=load, needs_root=False)

    assert spec.num_samples(None, "train", {}, 0) == 7 and spec.labels(None, "test", {}, 0).tolist() == [0, 1, 0]
    assert isinstance(spec.params, MappingProxyType)
    with pytest.raises(registry.RegistryError, match="kind must be one of classification, regression"):
        data.Spec(name="bad_t", kind="ranking", description="", load=load)
    data.add(wrong, origin="a test")
    try:
        with pytest.raises(data.DataError, match="'wrong_t' is registered as regression but its load returned "
                                                 "a classification Dataset"):
            data.load("wrong_t", "", "train")
    finally:
        registry.datasets.remove("wrong_t")


def test_check_params_names_the_field_and_lists_what_is_accepted():
    assert data.check_params("mnist", {}) is None and data.check_params("mnist-small", None) is None
    assert data.check_params("synthetic_regression", {"dim": 10, "noise": 0.5}) is None

    field, message = data.check_params("mnst", {})
    assert field == "data.name" and "'mnst'" in message and "mnist-small" in message
    field, message = data.check_params("mnist", {"dim": 3})
    assert field == "data.params.dim" and "'dim'" in message and "none" in message
    field, message = data.check_params("synthetic_regression", {"sigma": 1.0})
    assert field == "data.params.sigma" and "samples=4000" in message and "dim=1000" in message
    assert data.check_params("synthetic_regression", {"dim": 0})[0] == "data.params.dim"
    assert data.check_params("synthetic_regression", {"samples": 2.5})[0] == "data.params.samples"
    assert data.check_params("synthetic_regression", {"samples": True})[0] == "data.params.samples"
    field, message = data.check_params("synthetic_regression", {"noise": -0.1})
    assert field == "data.params.noise" and "-0.1" in message
    with pytest.raises(data.DataError, match="data.params.dim"):
        data.load("synthetic_regression", "", "train", params={"dim": -1})
    with pytest.raises(data.DataError, match="unknown data set 'mnst'"):
        data.load("mnst", "", "train")
    with pytest.raises(ValueError, match="split"):
        data.num_samples("mnist-small", "", "validation")


def test_labels_reads_only_what_it_needs_and_matches_load():
    labels = data.labels("mnist-small", "", "train")
    full = data.load("mnist-small", "", "train")

    assert labels.dtype == np.int64 and labels.shape == (6000,)
    np.testing.assert_array_equal(labels, full.targets)
    assert data.num_samples("mnist-small", "", "test") == 2000
    assert data.labels("synthetic_regression", "", "train", params={"samples": 5, "dim": 2}) is None


def test_dataset_kind_shape_and_checks():
    images = np.zeros((3, 1, 2, 2), np.uint8)
    ds = data.Dataset(images, np.array([0, 1, 2]), 3, (0.5,), (0.25,))
    features = data.Dataset(np.ones((4, 5), np.float32), np.zeros(4, np.float32), None, None, None)

    assert ds.kind == "classification" and ds.input_shape == (1, 2, 2) and len(ds) == 3
    assert features.kind == "regression" and features.input_shape == (5,)
    x, y = features.tensors()
    assert x.dtype == torch.float32 and y.dtype == torch.float32 and x.shape == (4, 5)
    with pytest.raises(data.DataError, match="3 inputs but 2 targets"):
        data.Dataset(images, np.array([0, 1]), 3, (0.5,), (0.25,))
    with pytest.raises(data.DataError, match="both mean and std"):
        data.Dataset(images, np.array([0, 1, 2]), 3, (0.5,), None)
    with pytest.raises(data.DataError, match="channels"):
        data.Dataset(images, np.array([0, 1, 2]), 3, (0.5, 0.5), (0.25, 0.25))
    with pytest.raises(data.DataError, match="int64"):
        data.Dataset(images, np.array([0, 1, 2], np.int32), 3, (0.5,), (0.25,))


def test_idx_labels_out_of_range_are_refused(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([3, 10], np.uint8))

    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte: labels must lie in \[0, 10\)"):
        data.load("mnist", tmp_path, "train")


def _old_normalize(images, mean, std):
    # The normalization as it was before the data module was split (reference).
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = images.to(torch.float32).div_(255.0).sub_(mean_t).div_(std_t)
    return x.contiguous(memory_format=torch.channels_last)


def test_tensors_are_bit_identical_to_the_old_normalization():
    ds = data.load("mnist-small", "", "test")
    index = np.arange(0, 2000, 3)

    x, y = ds.tensors(index)

    # As the old ArrayDataset.tensors did it: copy with np.array, then normalize.
    expected = _old_normalize(torch.from_numpy(np.array(ds.inputs[index])), (0.1307,), (0.3081,))
    assert torch.equal(x, expected) and x.stride() == expected.stride()
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(ds.targets[index]))


# ---------------------------------------------------------------- sampler


class _OldAgentData:
    """AgentData as it was before the data module was split: the reference for Sampler."""

    def __init__(self, dataset, shard, *, agent_id, seed, batch_size):
        self.mean, self.std = dataset.mean, dataset.std
        self.inputs = torch.from_numpy(dataset.inputs[shard])
        self.labels = torch.from_numpy(dataset.targets[shard])
        self.batch_size = batch_size
        self.rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, agent_id)))

    def all(self):
        return _old_normalize(self.inputs, self.mean, self.std), self.labels

    def batch(self):
        idx = torch.from_numpy(self.rng.integers(0, len(self.labels), self.batch_size))
        return (_old_normalize(self.inputs.index_select(0, idx), self.mean, self.std),
                self.labels.index_select(0, idx))


@pytest.mark.parametrize("agent_id, batch_size", [(0, 16), (5, 1), (7, 50)])
def test_sampler_batches_are_bit_identical_to_the_old_agent_data(agent_id, batch_size):
    ds = data.load("mnist-small", "", "train")
    shard = iid(len(ds), 10, seed=3)[agent_id]
    new = data.Sampler(ds, shard, agent_id=agent_id, seed=3, batch_size=batch_size)
    old = _OldAgentData(ds, shard, agent_id=agent_id, seed=3, batch_size=batch_size)

    for _ in range(4):
        (x_new, y_new), (x_old, y_old) = new.batch(), old.batch()
        assert torch.equal(x_new, x_old) and x_new.stride() == x_old.stride()
        assert torch.equal(y_new, y_old)
    assert torch.equal(new.all()[0], old.all()[0]) and torch.equal(new.all()[1], old.all()[1])
    assert len(new) == len(shard)


def test_sampler_full_batch_is_prepared_once_and_never_touches_the_stream():
    ds = data.load("mnist-small", "", "test")
    sampler = data.Sampler(ds, np.arange(40, 90), agent_id=2, seed=0, batch_size=0)
    before = sampler.state_dict()

    first, second = sampler.batch(), sampler.batch()

    assert first[0] is second[0] and first[1] is second[1]
    assert sampler.all()[0] is first[0]
    assert first[0].shape == (50, 1, 28, 28)
    assert torch.equal(first[0], ds.tensors(np.arange(40, 90))[0])
    assert sampler.state_dict() == before


def test_sampler_state_dict_round_trip_resumes_the_same_batches():
    ds = data.load("mnist-small", "", "test")
    shard = np.arange(0, 300, 2)
    original = data.Sampler(ds, shard, agent_id=4, seed=9, batch_size=8)
    for _ in range(3):
        original.batch()

    state = json.loads(json.dumps(original.state_dict()))
    restored = data.Sampler(ds, shard, agent_id=4, seed=9, batch_size=8)
    restored.load_state_dict(pickle.loads(pickle.dumps(state)))

    for _ in range(3):
        (x1, y1), (x2, y2) = original.batch(), restored.batch()
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ValueError, match=r"\(150, 8, 0.0\)"):
        data.Sampler(ds, shard[:10], agent_id=4, seed=9, batch_size=8).load_state_dict(state)


def test_sampler_on_regression_data_keeps_float_targets():
    ds = data.load("synthetic_regression", "", "train", params={"samples": 30, "dim": 4}, seed=1)
    sampler = data.Sampler(ds, np.arange(10), agent_id=0, seed=1, batch_size=5)

    x, y = sampler.batch()

    assert x.dtype == torch.float32 and x.shape == (5, 4)
    assert y.dtype == torch.float32 and y.shape == (5,)
    with pytest.raises(ValueError, match="empty shard"):
        data.Sampler(ds, np.arange(0), agent_id=3, seed=1, batch_size=5)


def test_a_fraction_batch_is_a_fresh_sample_without_replacement_every_round():
    ds = data.load("mnist-small", "", "test")
    sampler = data.Sampler(ds, np.arange(200, 400), agent_id=1, seed=0, batch_size=16, fraction=0.1)

    (x1, y1), (x2, _) = sampler.batch(), sampler.batch()

    assert x1.shape == (20, 1, 28, 28) and len(y1) == 20  # 10% of 200, batch_size ignored
    rows1 = {tuple(r.flatten().tolist()) for r in x1}
    assert len(rows1) == 20  # no sample twice in one batch
    assert not torch.equal(x1, x2)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        data.Sampler(ds, np.arange(10), agent_id=1, seed=0, batch_size=16, fraction=1.5)
