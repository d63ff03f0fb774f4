"""Generated data sets: the least-squares problem of Ghosh et al.

Ghosh, Maity, Kadhe, Mazumdar, Ramchandran, "Communication-Efficient and
Byzantine-Robust Distributed Learning with Error Feedback" (Section 7):
``w* = argmin_w ||A w - b||_2`` with A in R^{N x d} and w* in R^d drawn
entry-wise i.i.d. from the standard normal, and ``b = A w*``; the paper
uses N = 4000 and d = 1000, partitioned equally over m = 200 workers, and
reports ``||w_t - w*||``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import seeding
from .base import Dataset

PARAMS = {"samples": 4000, "dim": 1000, "noise": 0.0, "test_samples": 1000}

# Sub-streams of the DATA family: (DATA, _REGRESSION, part). w*, the
# training set and the test set each have their own, so that changing
# test_samples leaves w* and the training set as they were.
_REGRESSION = 0
_OPTIMUM, _TRAIN, _TEST = 0, 1, 2


def check(params: Mapping[str, Any]) -> tuple[str, str] | None:
    """(key, message) for a parameter value the generator cannot use, else None."""
    for key in ("samples", "dim", "test_samples"):
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return key, f"must be an integer >= 1, got {value!r}"
    noise = params["noise"]
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        return "noise", f"must be a finite number >= 0, got {noise!r}"
    return None


def optimum(seed: int, dim: int) -> np.ndarray:
    """w* (dim,) float32, drawn i.i.d. N(0, 1) from the stream (DATA, 0, 0) of ``seed``."""
    return seeding.numpy_generator(seed, seeding.DATA, _REGRESSION, _OPTIMUM).standard_normal(
        dim, dtype=np.float32)


def regression(*, samples: int, dim: int, noise: float, seed: int, split: str) -> Dataset:
    """One split of the least-squares problem: inputs A (samples, dim), targets b, optimum w*.

    ``A`` has i.i.d. N(0, 1) entries and ``b = A w* + noise * z`` with z
    i.i.d. N(0, 1) per entry (the paper's setting is noise = 0). A and w*
    are drawn directly as float32, so the stored values are exactly the ones
    that generated b; ``A w*`` (and the noise) is computed in float64 and
    rounded once to float32, so with noise 0 each stored target is the exact
    product to within one float32 rounding. ``optimum`` is w* as float32,
    the dtype of the model's parameters it is compared with.
    The training and test splits come from separate streams of ``seed``,
    (DATA, 0, 1) and (DATA, 0, 2): the same on every rank and every call.
    """
    w_star = optimum(seed, dim)
    rng = seeding.numpy_generator(seed, seeding.DATA, _REGRESSION, _TRAIN if split == "train" else _TEST)
    a = rng.standard_normal((samples, dim), dtype=np.float32)
    b = a.astype(np.float64) @ w_star.astype(np.float64)
    if noise:
        b += noise * rng.standard_normal(samples)
    return Dataset(a, b.astype(np.float32), None, None, None, optimum=w_star)


def load(split: str, params: Mapping[str, Any], seed: int) -> Dataset:
    """The split ``train`` (``samples`` rows) or ``test`` (``test_samples`` rows) for ``params``."""
    rows = params["samples"] if split == "train" else params["test_samples"]
    return regression(samples=rows, dim=params["dim"], noise=float(params["noise"]), seed=seed,
                      split=split)


def num_samples(split: str, params: Mapping[str, Any]) -> int:
    """The number of rows of a split, from the parameters alone."""
    return params["samples"] if split == "train" else params["test_samples"]
