"""Pure-tier tests of the rules of issue 19 (mda, smea, caf, monna, dnc): hand-worked examples,
brute-force references over all subsets, exact eigenvalues, ties, non-finite rows and checks."""

import itertools
import math

import numpy as np
import pytest
import torch

from mpisim.rules import aggregators as A

NEW = ["mda", "smea", "caf", "monna", "dnc"]


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(a, b, atol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=atol, rtol=1e-5)


# --------------------------------------------------------------------------
# References: the definitions, computed the slow way
# --------------------------------------------------------------------------

def ref_mda(x, f):
    """Every subset of n - f rows in lexicographic order; the first of smallest diameter."""
    x = x.astype(np.float64)
    n = len(x)
    dist = np.linalg.norm(x[:, None] - x[None, :], axis=2)
    best, chosen = math.inf, None
    for s in itertools.combinations(range(n), n - f):
        diameter = max((dist[i, j] for i, j in itertools.combinations(s, 2)), default=0.0)
        if diameter < best:
            best, chosen = diameter, s
    return x[list(chosen)].mean(axis=0)


def top_covariance_eigenvalue(rows):
    """Largest eigenvalue of the (d, d) empirical covariance (1/k) sum (x_i - mu)(x_i - mu)^T."""
    y = torch.as_tensor(rows, dtype=torch.float64)
    y = y - y.mean(dim=0)
    return float(torch.linalg.eigvalsh(y.T @ y / len(y))[-1])


def ref_smea(x, f):
    """Every subset's (d, d) covariance, eigvalsh on the stack; the first of smallest top eigenvalue."""
    subsets = list(itertools.combinations(range(len(x)), len(x) - f))
    y = torch.as_tensor(x, dtype=torch.float64)[torch.tensor(subsets)]        # (subsets, k, d)
    y = y - y.mean(dim=1, keepdim=True)
    top = torch.linalg.eigvalsh(y.transpose(1, 2) @ y / y.shape[1])[:, -1]
    chosen = subsets[int(torch.nonzero(top == top.min())[0])]
    return x[list(chosen)].astype(np.float64).mean(axis=0)


def ref_caf(x, f):
    """CAF with the (d, d) weighted covariance and its eigendecomposition (tau_max over weighted rows)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    n = len(x)
    c = torch.ones(n, dtype=torch.float64)
    best, out = math.inf, None
    while float(c.sum()) > n - 2 * f:
        mu = (c @ x) / c.sum()
        y = x - mu
        cov = (y.T * c) @ y / c.sum()
        lam, vec = torch.linalg.eigh(cov)
        if float(lam[-1]) < best:
            best, out = float(lam[-1]), mu
        tau = (y @ vec[:, -1]) ** 2
        c = (c * (1 - tau / tau[c > 0].max())).clamp_min(0)
    return out


# --------------------------------------------------------------------------
# Hand-worked examples
# --------------------------------------------------------------------------

def test_mda_and_smea_keep_the_tight_rows():
    # Prepare: three rows within 2 of each other and one at 10.
    x = t([[0], [1], [2], [10]])
    # Execute / Assert: {0, 1, 2} has diameter 2 and variance 2/3; every other triple holds 10.
    assert close(A.mda(x, f=1), [1])
    assert close(A.smea(x, f=1), [1])


def test_mda_and_smea_ties_keep_the_lexicographically_first_subset():
    # {0, 1, 2} and {1, 2, 3} both have diameter 2 and variance 2/3: rows 0, 1, 2 are kept.
    x = t([[0], [1], [2], [3], [10]])
    assert close(A.mda(x, f=2), [1])
    assert close(A.smea(x, f=2), [1])
    # Reversed, the same two values sit at rows 1-3 and 2-4: rows 1, 2, 3 (values 3, 2, 1) are kept.
    assert close(A.mda(x.flip(0), f=2), [2])
    assert close(A.smea(x.flip(0), f=2), [2])


def test_mda_and_smea_can_disagree():
    # Rows: a tight pair at 0 and 0.5 with 3 between, and a far point at 1.6.
    # Keep 3 of 4 (f=1): {0, 0.5, 1.6} has diameter 1.6, {0, 0.5, 3}: 3 ... MDA keeps the
    # smallest diameter; SMEA the smallest variance, computed here in full.
    x = t([[0, 0], [0.5, 0], [1.6, 0], [0.8, 1.5]])
    assert close(A.mda(x, f=1), ref_mda(x.numpy(), 1))
    assert close(A.smea(x, f=1), ref_smea(x.numpy(), 1))


def test_caf_hand_example():
    # n=4, f=1: steps run while the total weight exceeds n - 2f = 2.
    # Step 1: mu = 3.25, lambda = 62.75 / 4; tau = squared deviations, the largest (row 3) zeroes
    # it: c = (1 - 10.5625/45.5625, 1 - 5.0625/45.5625, 1 - 1.5625/45.5625, 0), sum 2.6228 > 2.
    # Step 2: mu = (c1 + 2 c2) / sum c = 1.07531..., lambda = 0.6554 < 15.69; then the largest
    # weighted tau (row 0) zeroes row 0 and the total weight drops to 1.136: stop.
    x = t([[0], [1], [2], [10]])
    c = [1 - 10.5625 / 45.5625, 1 - 5.0625 / 45.5625, 1 - 1.5625 / 45.5625]
    expected = (c[1] + 2 * c[2]) / sum(c)
    assert close(A.caf(x, f=1), [expected])
    # ByzFL's max over all rows (row 3's tau counts though its weight is 0) runs longer.
    assert not close(A.caf(x, f=1, tau_max="all"), [expected])


def test_caf_f0_is_the_mean_and_identical_rows_stop_at_once():
    x = t([[1, 2], [3, 4], [5, 9]])
    assert close(A.caf(x, f=0), [3, 5])
    same = t([[1, 2]] * 5)
    assert close(A.caf(same, f=2), [1, 2])


def test_monna_averages_the_nearest_rows_of_idx():
    x = t([[0], [1], [2], [10], [11]])
    assert close(A.monna(x, f=2), [1])                    # 0, 1, 2
    assert close(A.monna(x, f=2, idx=3), [(10 + 11 + 2) / 3])


def test_monna_tie_keeps_the_lower_index():
    # From row 0: distances 0, 2, 2, 1, 9; the third neighbour is row 1 or row 2 (both at 2).
    x = t([[0], [2], [-2], [1], [9]])
    assert close(A.monna(x, f=2), [1])                    # rows 0, 3, 1


def test_dnc_removes_the_row_along_the_top_singular_vector():
    # Centred rows: (0, -2.5) three times and (0, 7.5): the top direction is the second
    # coordinate and row 3 has the largest score; b = 10000 >= d takes every coordinate.
    x = t([[0, 0], [1, 0], [-1, 0], [0, 10]])
    assert close(A.dnc(x, f=1), [0, 0])
    # c = 0 removes nothing: the mean.
    assert close(A.dnc(x, f=1, c=0.0), x.mean(dim=0))


def test_dnc_with_every_coordinate_is_the_same_in_every_round():
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(2))
    assert torch.equal(A.dnc(x, f=2, niters=4), A.dnc(x, f=2, niters=1))


def test_dnc_draws_its_columns_from_the_generator_build_passes():
    x = torch.randn(11, 400, generator=torch.Generator().manual_seed(5))
    x[3, :200] += 3.0                      # an outlier on half the coordinates only
    agg = A.build("dnc", f=2, params={"b": 20, "niters": 2})

    a = agg(x, torch.Generator().manual_seed(1))
    b = agg(x, torch.Generator().manual_seed(1))

    assert torch.equal(a, b)
    assert torch.equal(a, A.dnc(x, f=2, b=20, niters=2, rng=torch.Generator().manual_seed(1)))
    assert torch.equal(A.dnc(x, f=2, b=20), A.dnc(x, f=2, b=20, rng=torch.Generator().manual_seed(0)))
    outs = {tuple(A.dnc(x, f=2, b=5, rng=torch.Generator().manual_seed(s)).tolist()) for s in range(6)}
    assert len(outs) > 1                   # the draw matters at b = 5


def test_sampled_columns_are_distinct_and_in_range():
    g = torch.Generator().manual_seed(3)
    for d, b in [(10, 3), (10, 9), (10 ** 6, 1000)]:
        cols = A._sample_columns(d, b, g)
        assert cols.numel() == b and cols.unique().numel() == b
        assert int(cols.min()) >= 0 and int(cols.max()) < d


# --------------------------------------------------------------------------
# Exact searches and eigenvalues against brute force
# --------------------------------------------------------------------------

@pytest.mark.parametrize("n,f,d", [(5, 1, 3), (7, 2, 4), (8, 3, 2), (9, 4, 12), (10, 2, 30)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mda_and_smea_match_brute_force(n, f, d, seed):
    rng = np.random.default_rng(100 * seed + n)
    x = (rng.standard_normal((n, d)) * rng.uniform(0.5, 3, size=(n, 1)) + 40).astype(np.float32)
    xt = torch.from_numpy(x)
    assert np.allclose(A.mda(xt, f=f).numpy(), ref_mda(x, f), atol=1e-4)
    assert np.allclose(A.smea(xt, f=f).numpy(), ref_smea(x, f), atol=1e-4)


def test_smea_search_prunes_and_still_finds_the_minimum():
    # 26 rows, f = 3: 2600 subsets, more than one batch of exact eigenvalues.
    rng = np.random.default_rng(8)
    x = rng.standard_normal((26, 40)).astype(np.float32)
    x[[4, 17]] *= 1.8
    assert np.allclose(A.smea(torch.from_numpy(x), f=3).numpy(), ref_smea(x, 3), atol=1e-5)


def test_scatter_eigenvalues_are_those_of_the_covariance():
    # smea's subsets' eigenvalues, from the n x n Gram matrix, against eigvalsh of the d x d covariance.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 5))
    G = torch.from_numpy(x @ x.T)
    J = G - G.mean(0, keepdim=True) - G.mean(1, keepdim=True) + G.mean()
    lam, U = torch.linalg.eigh(J)
    keep = lam > 1e-9
    Z, lam = U[:, keep] * lam[keep].sqrt(), lam[keep]
    removed = torch.tensor(list(itertools.combinations(range(7), 2)))
    got = A._scatter_top(Z, lam, removed, 5) / 5
    for r, value in zip(removed.tolist(), got.tolist()):
        kept = [i for i in range(7) if i not in r]
        assert math.isclose(value, top_covariance_eigenvalue(x[kept]), rel_tol=1e-9)
    # The screening test agrees with the eigenvalues on either side of a threshold.
    values = torch.sort(got * 5).values
    for thr in [float(values[0]) * 0.999, *((values[1:] + values[:-1]) / 2).tolist(), float(values[-1]) * 1.001]:
        assert torch.equal(A._scatter_below(Z, lam, removed, 5, thr), got * 5 < thr)


@pytest.mark.parametrize("n,f,d", [(5, 1, 3), (9, 3, 4), (12, 4, 20), (15, 2, 6)])
def test_caf_matches_the_d_by_d_computation(n, f, d):
    rng = np.random.default_rng(n + d)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[: f] += rng.standard_normal(d).astype(np.float32) * 4
    assert close(A.caf(torch.from_numpy(x), f=f), ref_caf(x, f), atol=1e-5)


def test_dnc_matches_an_svd_on_every_coordinate():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((10, 7)).astype(np.float32)
    x[2] += 2.0
    y = torch.from_numpy(x).double()
    y = y - y.mean(dim=0)
    v = torch.linalg.svd(y).Vh[0]
    keep = torch.sort((y @ v) ** 2, stable=True).indices[:8]
    assert close(A.dnc(torch.from_numpy(x), f=2), torch.from_numpy(x)[keep].mean(dim=0))


# --------------------------------------------------------------------------
# Properties, bad rows and checks
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mda", "smea", "caf", "dnc"])
def test_permutation_invariance_without_ties(name):
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(11))
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(12))
    assert close(A.REGISTRY[name](x, f=3), A.REGISTRY[name](x[perm], f=3))


def test_monna_follows_its_reference_row_under_permutation():
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(13))
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(14))
    where = int((perm == 0).nonzero())
    assert close(A.monna(x, f=3), A.monna(x[perm], f=3, idx=where))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e30, 3e38])
@pytest.mark.parametrize("name", NEW)
def test_f_bad_rows_are_left_out(name, value):
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(3))
    honest = [0, 2, 3, 5, 6, 8]
    for i, bad in enumerate([1, 4, 7]):
        x[bad] = value if i != 1 else -value if value == value else value
    x[4, 0] = 1.0 if value != value else x[4, 0]          # a row only partly NaN
    out = A.REGISTRY[name](x, f=3)
    assert torch.isfinite(out).all()
    lo, hi = x[honest].min(dim=0).values, x[honest].max(dim=0).values
    assert bool(((out >= lo - 1e-5) & (out <= hi + 1e-5)).all())


@pytest.mark.parametrize("name", ["mda", "smea", "monna", "dnc"])
def test_f_bad_rows_leave_the_average_of_the_honest_rows(name):
    # Honest rows close together, f = 2 NaN / inf rows: the n - f kept rows are the honest ones.
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(9)) * 0.1
    x[2] = math.nan
    x[5, 1] = math.inf
    honest = x[[0, 1, 3, 4, 6]]
    assert close(A.REGISTRY[name](x, f=2), honest.mean(dim=0))


def test_more_bad_rows_than_f_may_not_be_finite():
    x = t([[0], [1], [math.nan], [math.nan], [math.nan]])
    for name in NEW:
        assert not torch.isfinite(A.REGISTRY[name](x, f=1)).all(), name


def test_huge_finite_rows_do_not_overflow():
    x = t([[0, 1], [3e38, 0], [0, 1.5], [0, -1], [-3e38, 1]])
    for name in NEW:
        out = A.REGISTRY[name](x, f=2)
        assert torch.isfinite(out).all() and float(out.abs().max()) < 2, name


def test_checks_name_the_subset_count_and_the_parameter():
    msg = A.check("smea", 30, 10)
    assert "30045015" in msg and "max_subsets=1000000" in msg and "n=30" in msg and "f=10" in msg
    assert "mda" in A.check("mda", 30, 10)
    assert A.check("mda", 30, 10, {"max_subsets": 10 ** 8}) is None
    assert A.check("smea", 30, 4) is None
    assert A.check("monna", 5, 2) is None
    assert A.check("monna", 5, 1, {"idx": 5}) == "monna: needs idx < n, got idx=5, n=5, f=1"
    assert "needs n > 2f" in A.check("caf", 4, 2)
    assert "tau_max" in A.check("caf", 5, 1, {"tau_max": "max"})
    assert "floor(c f) = 6" in A.check("dnc", 5, 2, {"c": 3.0})
    assert "niters" in A.check("dnc", 5, 1, {"niters": 0})
    assert A.param_defaults("dnc") == {"niters": 1, "b": 10000, "c": 1.0}
    assert A.param_defaults("mda") == {"max_subsets": 10 ** 6}
    with pytest.raises(ValueError, match="max_subsets"):
        A.mda(torch.randn(30, 2), f=10)
