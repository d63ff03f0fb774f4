"""CIFAR-10 from batch files written in the original python-pickle format."""

import io
import json
import os
import pickle

import numpy as np
import pytest
import torch

from mpisim import datasets as data
from mpisim.datasets import cifar

TRAIN_ROWS = (3, 2, 4, 1, 2)  # rows of data_batch_1 .. data_batch_5 (the originals have 10,000)


def write_batch(path, pixels, labels, label="training batch"):
    """A batch as the original files hold it: a protocol-2 pickled dict with byte-string keys."""
    entry = {
        b"batch_label": label.encode(),
        b"labels": [int(v) for v in labels],
        b"data": pixels,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    path.write_bytes(pickle.dumps(entry, protocol=2))


def make_cifar(root, seed=0):
    """Small train and test batches in root/cifar-10-batches-py; returns (pixels, labels) per split."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    parts = {}
    for name, rows in [*zip(cifar.TRAIN_BATCHES, TRAIN_ROWS), ("test_batch", 3)]:
        pixels = rng.integers(0, 256, (rows, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, rows)
        write_batch(folder / name, pixels, labels)
        parts[name] = pixels, labels
    train = [parts[n] for n in cifar.TRAIN_BATCHES]
    return ({"train": (np.concatenate([p for p, _ in train]), np.concatenate([y for _, y in train])),
             "test": parts["test_batch"]}, folder)


def test_batches_load_in_order_with_shapes_and_labels(tmp_path):
    expected, _ = make_cifar(tmp_path)

    train = data.load("cifar10", tmp_path, "train")
    test = data.load("cifar10", tmp_path, "test")

    assert train.inputs.shape == (12, 3, 32, 32) and train.inputs.dtype == np.uint8
    assert test.inputs.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(train.inputs.reshape(12, -1), expected["train"][0])
    np.testing.assert_array_equal(train.targets, expected["train"][1])
    assert train.targets.dtype == np.int64 and train.num_classes == 10 and train.kind == "classification"
    np.testing.assert_array_equal(test.targets, expected["test"][1])
    assert data.num_samples("cifar10", tmp_path, "train") == 12
    np.testing.assert_array_equal(data.labels("cifar10", tmp_path, "test"), expected["test"][1])


def test_root_may_be_the_batch_folder_or_its_parent(tmp_path):
    _, folder = make_cifar(tmp_path)

    from_parent = data.load("cifar10", tmp_path, "test")
    from_folder = data.load("cifar10", folder, "test")

    np.testing.assert_array_equal(from_parent.inputs, from_folder.inputs)


def test_channel_major_rows_land_in_the_right_channel_and_pixel(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    pixels = np.zeros((2, 3072), dtype=np.uint8)
    # Row 1, pixel (row 5, column 7): red 10, green 200, blue 30.
    offset = 5 * 32 + 7
    pixels[1, offset], pixels[1, 1024 + offset], pixels[1, 2048 + offset] = 10, 200, 30
    for name in cifar.TRAIN_BATCHES:
        write_batch(folder / name, pixels, [4, 9])

    ds = data.load("cifar10", tmp_path, "train")

    assert ds.input_shape == (3, 32, 32)
    assert ds.inputs[1, :, 5, 7].tolist() == [10, 200, 30]
    assert ds.inputs[1].sum() == 240 and ds.inputs[0].sum() == 0
    assert ds.targets[:2].tolist() == [4, 9]


def test_normalization_uses_the_training_set_statistics(tmp_path):
    make_cifar(tmp_path)
    ds = data.load("cifar10", tmp_path, "test")

    x, y = ds.tensors()

    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    raw = ds.inputs.astype(np.float64) / 255
    expected = (raw - np.array(ds.mean)[None, :, None, None]) / np.array(ds.std)[None, :, None, None]
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert y.dtype == torch.int64


class Exploit:
    """An object whose unpickling would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code_in_a_batch_file(tmp_path):
    make_cifar(tmp_path)
    marker = tmp_path / "pwned"
    target = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    target.write_bytes(pickle.dumps({b"data": Exploit(marker), b"labels": []}, protocol=2))

    with pytest.raises(data.DataError, match=r"data_batch_2: refusing to load global (posix|os)\.system"):
        data.load("cifar10", tmp_path, "train")
    assert not marker.exists()
    # Protocol 2 names the builtins module __builtin__ (Python 2's name).
    with pytest.raises(data.DataError, match=r"refusing to load global __builtin__\.eval"):
        cifar.BatchUnpickler(io.BytesIO(pickle.dumps(eval, protocol=2)), encoding="bytes").load()


def test_unpickler_reads_arrays_pickled_by_numpy_1_and_2():
    array = np.arange(12, dtype=np.uint8).reshape(2, 6)
    modern = pickle.dumps(array, protocol=2)
    # numpy 1 (and the original files) name the module numpy.core.multiarray.
    legacy = modern.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy and b"numpy._core.multiarray" not in legacy

    for blob in (modern, legacy):
        got = cifar.BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
        np.testing.assert_array_equal(got, array)


def test_missing_or_malformed_batches_are_named(tmp_path):
    _, folder = make_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(data.DataError, match="data_batch_3 does not exist"):
        data.load("cifar10", tmp_path, "train")

    write_batch(folder / "data_batch_3", np.zeros((2, 3071), np.uint8), [0, 1])
    with pytest.raises(data.DataError, match=r"data_batch_3: b'data' must be a uint8 array of shape \(k, 3072\)"):
        data.load("cifar10", tmp_path, "train")

    write_batch(folder / "data_batch_3", np.zeros((2, 3072), np.uint8), [0, 10])
    with pytest.raises(data.DataError, match=r"data_batch_3: labels must lie in \[0, 10\)"):
        data.load("cifar10", tmp_path, "train")

    write_batch(folder / "data_batch_3", np.zeros((2, 3072), np.uint8), [0])
    with pytest.raises(data.DataError, match="data_batch_3: b'labels' must hold 2 integers"):
        data.load("cifar10", tmp_path, "train")

    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(data.DataError, match="test_batch: not a readable CIFAR-10 batch"):
        data.load("cifar10", tmp_path, "test")
    with pytest.raises(data.DataError, match="does not exist"):
        data.load("cifar10", tmp_path / "nowhere", "test")
    with pytest.raises(data.DataError, match="set data.root"):
        data.load("cifar10", "", "test")


@pytest.mark.processes
def test_lenet_trains_on_cifar10_batches_in_the_original_format(mpirun, tmp_path):
    make_cifar(tmp_path / "data")
    result = mpirun(3, ["-m", "mpisim.server_mode", "--data.name", "cifar10", "--data.root",
                        str(tmp_path / "data"), "--agents.n", "4", "--agents.per_rank", "2",
                        "--data.batch_size", "2", "--run.rounds", "3", "--run.eval_every", "3",
                        "--run.progress", "false", "--run.out_dir", str(tmp_path), "--run.name", "c"],
                    timeout=180)

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["d"] == 657_080 and summary["test_samples"] == 3  # LeNet on 3x32x32 inputs
