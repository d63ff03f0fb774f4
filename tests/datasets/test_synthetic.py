"""The synthetic least-squares set of Ghosh et al. (Section 7)."""

import numpy as np
import pytest
import torch

from mpisim import datasets as data
from mpisim.datasets import synthetic

SMALL = {"samples": 60, "dim": 8, "test_samples": 25}


def load(split, seed=0, **params):
    return data.load("synthetic_regression", "", split, params={**SMALL, **params}, seed=seed)


def test_shapes_dtypes_and_kind():
    train, test = load("train"), load("test")

    assert train.inputs.shape == (60, 8) and train.inputs.dtype == np.float32
    assert train.targets.shape == (60,) and train.targets.dtype == np.float32
    assert test.inputs.shape == (25, 8) and len(test) == 25
    assert train.kind == "regression" and train.num_classes is None and train.input_shape == (8,)
    assert train.mean is None and train.std is None
    assert train.optimum.shape == (8,) and train.optimum.dtype == np.float32
    np.testing.assert_array_equal(train.optimum, test.optimum)
    x, y = train.tensors(np.arange(5))
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(train.inputs[:5]))


def test_defaults_are_the_papers_sizes_and_counts_come_from_params():
    assert synthetic.PARAMS == {"samples": 4000, "dim": 1000, "noise": 0.0, "test_samples": 1000}
    assert data.num_samples("synthetic_regression", "", "train") == 4000
    assert data.num_samples("synthetic_regression", "", "test", params={"test_samples": 7}) == 7


def test_same_data_on_every_call_and_training_set_independent_of_test_samples():
    first, again = load("train", seed=5), load("train", seed=5)
    other_test_size = load("train", seed=5, test_samples=999)
    test = load("test", seed=5)

    for ds in (again, other_test_size):
        np.testing.assert_array_equal(first.inputs, ds.inputs)
        np.testing.assert_array_equal(first.targets, ds.targets)
        np.testing.assert_array_equal(first.optimum, ds.optimum)
    assert not np.array_equal(first.inputs[:25], test.inputs)  # its own stream
    # The root is ignored: no files are read.
    np.testing.assert_array_equal(
        data.load("synthetic_regression", "/nowhere", "train", params=SMALL, seed=5).inputs, first.inputs)


def test_targets_are_a_times_w_star_when_noise_is_zero():
    train = load("train", seed=2, samples=200, dim=50)
    a, b, w = train.inputs, train.targets, train.optimum

    # Rounded once from the float64 product of the stored float32 A and w*.
    np.testing.assert_array_equal(b, (a.astype(np.float64) @ w.astype(np.float64)).astype(np.float32))
    np.testing.assert_allclose(a @ w, b, rtol=1e-4, atol=1e-4)
    # w* is the least-squares solution.
    solution = np.linalg.lstsq(a.astype(np.float64), b.astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(solution, w, atol=1e-5)


def test_noise_has_the_requested_standard_deviation():
    train = load("train", seed=3, samples=20000, dim=4, noise=0.5)
    noiseless = load("train", seed=3, samples=20000, dim=4, noise=0.0)

    residual = train.targets.astype(np.float64) - train.inputs.astype(np.float64) @ train.optimum
    assert abs(residual.std() - 0.5) < 0.02 and abs(residual.mean()) < 0.02
    np.testing.assert_array_equal(train.inputs, noiseless.inputs)  # noise does not move A


def test_entries_are_standard_normal_and_seeds_differ():
    train = load("train", seed=0, samples=2000, dim=50)
    other = load("train", seed=1, samples=2000, dim=50)

    assert abs(train.inputs.mean()) < 0.01 and abs(train.inputs.std() - 1) < 0.01
    assert not np.array_equal(train.inputs, other.inputs)
    assert not np.array_equal(train.optimum, other.optimum)


@pytest.mark.parametrize("params, key", [({"samples": 0}, "samples"), ({"dim": 1.5}, "dim"),
                                         ({"noise": float("nan")}, "noise"),
                                         ({"test_samples": -2}, "test_samples")])
def test_bad_values_are_refused(params, key):
    field, message = data.check_params("synthetic_regression", params)
    assert field == f"data.params.{key}" and "must be" in message
