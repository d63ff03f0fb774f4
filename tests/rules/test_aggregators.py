"""Pure-tier tests of mpisim.rules.aggregators: hand-worked examples from the
papers' definitions, properties, numpy references and non-finite inputs."""

import math

import numpy as np
import pytest
import torch

from mpisim.rules import aggregators as A

# fltrust needs the server's own gradient (root=): its properties are tested in test_fltrust.py and
# by the test kit, which gives it one.
NEEDS_ROOT = {"fltrust"}
ROBUST = sorted(name for name in A.REGISTRY if name != "mean" and name not in NEEDS_ROOT)


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(a, b, atol=1e-5, rtol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64),
                          torch.as_tensor(b, dtype=torch.float64), atol=atol, rtol=rtol)


def legal_f(name, n):
    """The largest f that rule `name` accepts for n rows (None if none)."""
    legal = [f for f in range(n) if A.check(name, n, f) is None]
    return max(legal) if legal else None


# --------------------------------------------------------------------------
# Hand-worked examples
# --------------------------------------------------------------------------

def test_mean_averages_rows():
    # Prepare
    x = t([[1, 2, 3], [3, 4, 5], [5, 6, 10]])
    # Execute
    out = A.mean(x, f=7)   # f is ignored by the baseline
    # Assert
    assert close(out, [3, 4, 6])
    assert out.dtype == torch.float32 and out.shape == (3,)


# Five rows with norms 1, 2, 3, sqrt(3), 10.
CGE_X = [[1, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 1], [10, 0, 0]]


def test_cge_drops_largest_norms_and_sums():
    x = t(CGE_X)
    # f=1 drops the norm-10 row; the other four are summed (eq 7).
    assert close(A.cge(x, f=1), [2, 3, 4])
    # f=2 (largest legal for n=5) also drops the norm-3 row.
    assert close(A.cge(x, f=2), [2, 3, 1])
    assert close(A.cge(x, f=2, reduce="mean"), [2 / 3, 1, 1 / 3])
    assert close(A.cge(x, f=0), [12, 3, 4])


def test_cge_norm_tie_keeps_lower_index():
    x = t([[3, 0], [0, 3], [1, 0]])
    assert close(A.cge(x, f=1), [4, 0])


CWTM_X = [[1, 10, 5], [2, 20, 5], [6, 30, 5], [7, 40, 1], [100, -50, 9]]


def test_cwtm_hand_example():
    x = t(CWTM_X)
    # Column 0 sorted: 1 2 6 7 100; column 1: -50 10 20 30 40; column 2: 1 5 5 5 9.
    assert close(A.cwtm(x, f=1), [(2 + 6 + 7) / 3, 20, 5])
    assert close(A.cwtm(x, f=2), [6, 20, 5])          # largest legal f: the middle value
    assert close(A.cwtm(x, f=0), [116 / 5, 10, 5])


def test_cwtm_f0_equals_mean():
    x = torch.randn(9, 40)
    torch.testing.assert_close(A.cwtm(x, f=0), A.mean(x, f=0))  # the same sum, in another order


def test_median_odd_and_even_n():
    x = t(CWTM_X)
    assert close(A.median(x, f=2), [6, 20, 5])
    # Even n: average of the two middle values (Yin et al., Definition 1),
    # not the lower one that torch.median returns.
    even = t([[1, 0], [2, 10], [6, 4], [7, 4]])
    assert close(A.median(even, f=1), [4, 4])
    assert not close(A.median(even, f=1), torch.median(even, dim=0).values)


POW = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1000]


def test_trimmed_mean_fraction_and_rounding():
    x = t([[v] for v in POW])
    assert close(A.trimmed_mean(x, f=0, beta=0.25), [252 / 6])   # floor(2.5) = 2 per side
    assert close(A.trimmed_mean(x, f=0, beta=0.3), [120 / 4])    # 0.3 * 10 -> exactly 3
    assert close(A.trimmed_mean(x, f=0, beta=0.1), [510 / 8])
    assert close(A.trimmed_mean(x, f=0, beta=0.0), [sum(POW) / 10])
    # Default beta = f/n: the same as cwtm with f.
    assert close(A.trimmed_mean(x, f=2), A.cwtm(x, f=2))


def test_trimmed_mean_rejects_beta_half():
    x = t([[v] for v in POW])
    with pytest.raises(ValueError, match="beta"):
        A.trimmed_mean(x, f=0, beta=0.5)
    assert "beta" in A.check("trimmed_mean", 10, 0, {"beta": -0.1})


def test_meamed_hand_example():
    x = t([[1, 0], [2, 3], [6, 4], [7, 5], [100, 10]])
    # Column 0: median 6, the four closest are 1 2 6 7; column 1: median 4, drop 10.
    assert close(A.meamed(x, f=1), [4, 3])
    # f=2: the three closest to 6 are 6, 7, 2; to 4: 4, 3 and 5.
    assert close(A.meamed(x, f=2), [5, 4])


def test_meamed_tie_keeps_lower_value():
    # Median 4; 2 and 6 at distance 2, then 0 and 8 tie at distance 4.
    x = t([[0], [2], [6], [8]])
    assert close(A.meamed(x, f=1), [8 / 3])


def test_geomed_hand_examples():
    # Symmetric cross: the centre.
    cross = t([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]])
    assert close(A.geomed(cross, f=2), [0, 0], atol=1e-6)
    # Collinear, odd count: the middle point, however far the others are.
    line = t([[0], [1], [10]])
    assert close(A.geomed(line, f=1), [1], atol=1e-5)
    # Equilateral triangle: its centre.
    tri = t([[0, 0], [2, 0], [1, math.sqrt(3)]])
    assert close(A.geomed(tri, f=1), [1, math.sqrt(3) / 3], atol=1e-5)


def test_geomed_on_a_repeated_point():
    # Three of five rows coincide: that point is the geometric median, and
    # the iterate sits on it (the smoothing case).
    x = t([[1, 1], [1, 1], [1, 1], [5, 5], [-3, 7]])
    assert close(A.geomed(x, f=2), [1, 1], atol=1e-6)
    # Two of five coincide and the optimum is still that point (the other
    # three pull with unit vectors whose sum has norm < 2).
    y = t([[0, 0], [0, 0], [1, 0], [0, 1], [-1, -1]])
    assert close(A.geomed(y, f=2), [0, 0], atol=1e-5)


def test_geomed_satisfies_optimality_condition():
    torch.manual_seed(1)
    x = torch.randn(9, 5) * 3 + 2
    y = A.geomed(x, f=4).double()
    diff = y - x.double()
    grad = (diff / diff.norm(dim=1, keepdim=True)).sum(dim=0)
    assert grad.norm() < 1e-4


def test_mom_groups_contiguous_agents():
    x = t([[0], [2], [4], [6], [100], [102]])
    # Default groups for n=6, f=1: smallest divisor >= 3 is 3: means 1, 5, 101;
    # in one dimension the geometric median is their median.
    assert close(A.mom(x, f=1), [5], atol=1e-5)
    # groups=6: the geometric median of the rows themselves (any point of [4, 6]).
    out = float(A.mom(x, f=1, groups=6)[0])
    assert 4 - 1e-5 <= out <= 6 + 1e-5
    # f=0: one group, the mean.
    assert close(A.mom(x, f=0), [214 / 6])


def test_mom_bad_groups():
    assert "divide" in A.check("mom", 6, 1, {"groups": 4})
    assert "groups > 2f" in A.check("mom", 6, 1, {"groups": 2})
    msg = A.check("mom", 10, 5)        # no divisor of 10 is >= 11
    assert "n=10" in msg and "f=5" in msg


KRUM_X = [[0], [1], [2], [3], [20]]


def test_krum_and_multikrum_hand_example():
    x = t(KRUM_X)
    # n=5, f=1: k = n-f-2 = 2 neighbours. Scores: 5, 2, 2, 5, 289+324.
    assert close(A.krum(x, f=1), [1])                     # tie 1/2 -> lower index
    assert close(A.multikrum(x, f=1, m=3), [1])           # rows 1, 2, 0
    assert close(A.multikrum(x, f=1), [1.5])              # m = n - f = 4: rows 0..3


def test_krum_neighbour_conventions_differ():
    x = t([[0], [1], [10], [12], [14]])
    # k=2: scores 101, 82, 20, 8, 20 -> 12.  k=3: 245, 203, 101, 129, 189 -> 10.
    assert close(A.krum(x, f=1), [12])
    assert close(A.krum(x, f=1, neighbours="n-f-1"), [10])


def test_bulyan_hand_example():
    x = t([[0], [1], [2], [3], [4], [5], [100]])
    # n=7, f=1: theta=5 picks by Krum in the shrinking set: 2, 3, 1, 4, 0;
    # beta=3 values closest to their median 2 are 1, 2, 3.
    assert close(A.bulyan(x, f=1), [2])


def test_norm_threshold_rounds_dropped_count_up():
    x = t(CGE_X)
    assert close(A.norm_threshold(x, f=1), [0.5, 0.75, 1.0])            # beta = f/n
    assert close(A.norm_threshold(x, f=0, beta=0.2), [0.5, 0.75, 1.0])  # ceil(1.0) = 1
    assert close(A.norm_threshold(x, f=0, beta=0.21), [2 / 3, 1, 1 / 3])  # ceil(1.05) = 2
    assert close(A.norm_threshold(x, f=0, beta=0.0), A.mean(x, f=0))


def test_cc_hand_example_and_iterations():
    x = t([[3, 4], [0, 0.5], [-0.6, 0.8]])
    # From v=0 with tau=1: [3,4] is clipped to [0.6,0.8], the others pass.
    assert close(A.cc(x, f=1, tau=1.0, center="zero"), [0, 0.7])
    # Two steps are one step started from the first result.
    once = A.cc(x, f=1, tau=1.0, center="zero")
    assert close(A.cc(x, f=1, tau=1.0, center="zero", iters=2),
                 A.cc(x, f=1, tau=1.0, center=once))
    # Default centre: the coordinate-wise median.
    assert close(A.cc(x, f=1), A.cc(x, f=1, center=A.median(x, f=1)))


# --------------------------------------------------------------------------
# numpy references on random inputs (both the network and the sort path)
# --------------------------------------------------------------------------

def ref_cwtm(x, f):
    s = np.sort(x, axis=0)
    return s[f:len(x) - f].mean(axis=0)


def ref_meamed(x, f):
    s = np.sort(x, axis=0)
    med = np.median(s, axis=0)
    idx = np.argsort(np.abs(s - med), axis=0, kind="stable")[: len(x) - f]
    return np.take_along_axis(s, idx, axis=0).mean(axis=0)


def ref_multikrum(x, f, m, k):
    n = len(x)
    d2 = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    scores = [np.sort(np.delete(d2[i], i))[:k].sum() for i in range(n)]
    chosen = np.argsort(scores, kind="stable")[:m]
    return x[chosen].mean(axis=0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 16, 17, 24, 33, 56, 57, 70])
def test_coordinatewise_rules_match_numpy(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 37)).astype(np.float32)
    x[:, 0] = np.round(x[:, 0])         # a column with many ties
    xt = torch.from_numpy(x)
    for f in sorted({0, 1, n // 4, (n - 1) // 2}):
        if n <= 2 * f:
            continue
        assert np.allclose(A.cwtm(xt, f=f).numpy(), ref_cwtm(x, f), atol=1e-5), f
        assert np.allclose(A.meamed(xt, f=f).numpy(), ref_meamed(x, f), atol=1e-5), f
    assert np.allclose(A.median(xt, f=0).numpy(), np.median(x, axis=0), atol=1e-6)


@pytest.mark.parametrize("n,f", [(5, 1), (9, 2), (12, 3), (20, 4)])
@pytest.mark.parametrize("neighbours", ["n-f-2", "n-f-1"])
def test_multikrum_matches_numpy(n, f, neighbours):
    rng = np.random.default_rng(n * 7 + f)
    x = (rng.standard_normal((n, 16)) + 50).astype(np.float32)   # offset: tests precision
    k = n - f - 2 if neighbours == "n-f-2" else n - f - 1
    for m in (1, 2, n - f):
        out = A.multikrum(torch.from_numpy(x), f=f, m=m, neighbours=neighbours)
        assert np.allclose(out.numpy(), ref_multikrum(x, f, m, k), atol=1e-5)


def ref_bulyan(x, f):
    n = len(x)
    d2 = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    remaining, picked = list(range(n)), []
    for _ in range(n - 2 * f):
        r = len(remaining)
        k = max(1, r - f - 2)
        scores = [np.sort([d2[i, j] for j in remaining if j != i])[:k].sum() for i in remaining]
        picked.append(remaining.pop(int(np.argmin(scores))))
    return ref_meamed(x[sorted(picked)], 2 * f)


@pytest.mark.parametrize("n,f", [(3, 0), (7, 1), (11, 2), (16, 3)])
def test_bulyan_matches_numpy(n, f):
    x = np.random.default_rng(n).standard_normal((n, 9)).astype(np.float32)
    assert np.allclose(A.bulyan(torch.from_numpy(x), f=f).numpy(), ref_bulyan(x, f), atol=1e-5)


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

def _params(name):
    return {"center": "median"} if name == "cc" else {}


@pytest.mark.parametrize("name", sorted(set(A.REGISTRY) - {"mom", "monna", "mda"} - NEEDS_ROOT))
def test_permutation_invariance(name):
    # Left out, by definition: mom's groups are fixed by agent index, monna averages around
    # row idx; mda's diameter is one pair's distance, so subsets that share that pair tie
    # (here too) and the lower indices win (tested without ties in test_rules_wave3).
    torch.manual_seed(3)
    x = torch.randn(11, 8)
    perm = torch.randperm(11)
    a = A.REGISTRY[name](x, f=2)
    b = A.REGISTRY[name](x[perm], f=2)
    assert close(a, b, atol=1e-5)


EQUIVARIANT = ["mean", "cwtm", "trimmed_mean", "median", "meamed", "geomed", "mom",
               "krum", "multikrum", "bulyan", "cc", "mda", "smea", "caf", "monna", "dnc"]


@pytest.mark.parametrize("name", EQUIVARIANT)
def test_translation_equivariance(name):
    torch.manual_seed(4)
    x = torch.randn(11, 6)
    shift = t([3, -2, 5, 0.5, -7, 1])
    a = A.REGISTRY[name](x, f=2) + shift
    b = A.REGISTRY[name](x + shift, f=2)
    assert close(a, b, atol=1e-4)


def test_cge_is_not_translation_equivariant():
    x = t(CGE_X)
    shift = t([-10, 0, 0])
    assert not close(A.cge(x + shift, f=1), A.cge(x, f=1) + 4 * shift)


@pytest.mark.parametrize("name", sorted(set(A.REGISTRY) - NEEDS_ROOT))
def test_input_is_not_modified(name):
    torch.manual_seed(5)
    x = torch.randn(11, 6)
    x[3] = math.nan
    x[8] = 1e30
    bits = x.view(torch.int32).clone()
    A.REGISTRY[name](x, f=2)
    assert torch.equal(x.view(torch.int32), bits)


BAD_VALUES = [math.nan, math.inf, -math.inf, 1e30, -1e30, 3e38]


def _with_bad_rows(n, d, f, value, seed=6):
    torch.manual_seed(seed)
    honest = torch.randn(n, d)
    bad = list(range(1, n, max(1, n // max(f, 1))))[:f]
    x = honest.clone()
    x[bad] = value
    keep = [i for i in range(n) if i not in bad]
    return x, honest[keep]


@pytest.mark.parametrize("value", BAD_VALUES + ["mixed"])
@pytest.mark.parametrize("name", ROBUST)
def test_f_bad_rows_keep_output_finite_and_bounded(name, value):
    n, d = 11, 5
    f = legal_f(name, n) if name != "bulyan" else 2
    f = min(f, 3)
    if value == "mixed":
        x, honest = _with_bad_rows(n, d, f, 0.0)
        bad = [i for i in range(n) if not any(torch.equal(x[i], h) for h in honest)]
        for i, v in zip(bad, [math.nan, -math.inf, 1e30]):
            x[i] = v
        x[bad[0], 0] = 1.0            # a row that is only partly NaN
    else:
        x, honest = _with_bad_rows(n, d, f, value)
    out = A.REGISTRY[name](x, f=f)
    assert torch.isfinite(out).all()
    lo, hi = honest.min(dim=0).values, honest.max(dim=0).values
    if name == "cge":
        # The f bad rows are dropped: the sum of exactly the honest rows.
        assert close(out, honest.sum(dim=0), atol=1e-4)
    elif name == "cc":
        # Each bad row moves the estimate by at most tau / n.
        v0 = A.median(x, f=f)
        diff = honest - v0
        clip = diff * torch.clamp(10.0 / diff.norm(dim=1, keepdim=True), max=1.0)
        expected = v0 + clip.sum(dim=0) / n
        assert (out - expected).norm() <= 10.0 * f / n + 1e-4
    elif name == "majority_vote":
        # A vote, not an estimate: +-1 everywhere, the honest majority's sign wherever it
        # leads by more than the f bad votes.
        assert bool((out.abs() == 1).all())
        lead = (honest >= 0).sum(dim=0) - (honest < 0).sum(dim=0)
        clear = lead.abs() > f
        assert torch.equal(out[clear], torch.sign(lead[clear]).float())
    elif name in ("geomed", "mom"):
        # Geometric-median-type bound: within C * (honest radius) of the honest mean.
        centre = honest.mean(dim=0)
        radius = (honest - centre).norm(dim=1).max()
        assert (out - centre).norm() <= 2 * (n - f) / (n - 2 * f) * radius
    else:
        assert bool(((out >= lo - 1e-5) & (out <= hi + 1e-5)).all())
    if name in ("krum",):
        assert any(torch.equal(out, h) for h in honest)
    if name == "multikrum":
        assert close(out, honest.mean(dim=0), atol=1e-5)


@pytest.mark.parametrize("name", ["cwtm", "median", "meamed"])
def test_bad_rows_on_the_sort_path(name):
    # n > 56 uses numpy's row sort instead of a sorting network.
    x, honest = _with_bad_rows(61, 7, 15, math.nan)
    x[30] = -math.inf
    x[31] = 1e30
    out = A.REGISTRY[name](x, f=17)
    lo, hi = honest.min(dim=0).values, honest.max(dim=0).values
    assert bool(((out >= lo) & (out <= hi)).all())


def test_huge_finite_rows_keep_their_norms():
    # Norms of 2e30 and 1e30 overflow float32 squares; they must still be
    # ordered (cge drops only the larger) and clipped to length tau (cc).
    x = t([[2e30, 0], [1e30, 0], [1, 0], [0, 1], [1, 1]])
    assert close(A.cge(x, f=1), [1e30, 2], rtol=1e-6)
    y = t([[1e30, 0], [0, 0.5], [0, -0.5]])
    assert close(A.cc(y, f=1, tau=1.0, center="zero"), [1 / 3, 0])


def test_more_bad_rows_than_f_may_be_non_finite():
    x = t([[1], [2], [math.inf], [math.inf], [math.inf]])
    assert torch.isinf(A.median(x, f=2)).all()


# --------------------------------------------------------------------------
# Checks and messages
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ROBUST)
def test_illegal_f_is_loud_and_names_n_and_f(name):
    n = 6
    largest = legal_f(name, n)
    f = 0 if largest is None else largest + 1
    msg = A.check(name, n, f)
    assert msg and name in msg and f"n={n}" in msg and f"f={f}" in msg
    with pytest.raises(ValueError, match=f"n={n}"):
        A.REGISTRY[name](torch.randn(n, 3), f=f)


def test_bounds_on_f():
    assert A.check("cwtm", 6, 3) == "cwtm: needs n > 2f, got n=6, f=3"
    assert A.check("cwtm", 7, 3) is None
    assert A.check("krum", 5, 1) is None and A.check("krum", 4, 1)
    assert A.check("krum", 4, 1, {"neighbours": "n-f-1"}) is None
    assert A.check("bulyan", 7, 1) is None and "4f + 3" in A.check("bulyan", 6, 1)
    assert A.check("multikrum", 6, 1, {"m": 5}) is None
    assert A.check("multikrum", 6, 1, {"m": 6}) == \
        "multikrum: needs 1 <= m <= n - f, got m=6, n=6, f=1"
    assert A.check("mean", 3, 10) is None


def test_check_reports_unknown_names_and_values():
    assert "known aggregators" in A.check("avg", 5, 1) and "cwtm" in A.check("avg", 5, 1)
    msg = A.check("cge", 5, 1, {"reduction": "sum"})
    assert "'reduction'" in msg and "reduce" in msg
    assert "reduce" in A.check("cge", 5, 1, {"reduce": "max"})
    assert "tau" in A.check("cc", 5, 1, {"tau": -1})
    assert "f must be" in A.check("cwtm", 5, -1)
    with pytest.raises(ValueError, match="reduction"):
        A.cge(torch.randn(5, 2), f=1, reduction="sum")


def test_every_rule_has_a_check_attribute_and_defaults():
    for name, fn in A.REGISTRY.items():
        assert callable(fn.check)
        assert A.param_defaults(name) == fn.defaults
    assert A.param_defaults("cge") == {"reduce": "sum"}
    assert A.param_defaults("multikrum") == {"m": None, "neighbours": "n-f-2"}
    assert A.param_defaults("bucketing") == {"s": 2}


# --------------------------------------------------------------------------
# Pre-aggregation and pipelines
# --------------------------------------------------------------------------

def test_nnm_hand_example_then_cwtm():
    x = t([[0], [1], [2], [10]])
    mixed, f2 = A.nnm(x, f=1)
    # Each row becomes the mean of its 3 nearest rows, itself included.
    assert f2 == 1
    assert close(mixed, [[1], [1], [1], [13 / 3]])
    agg = A.build("cwtm", f=1, pre=["nnm"])
    assert close(agg(x), [1])


def test_nnm_keeps_bad_rows_out_of_honest_mixtures():
    x, honest = _with_bad_rows(9, 4, 2, math.nan)
    mixed, _ = A.nnm(x, f=2)
    assert torch.isfinite(mixed).sum() == 7 * 4
    assert torch.isfinite(A.build("cwtm", f=2, pre=["nnm"])(x)).all()


def test_bucketing_is_deterministic_given_the_seed():
    x = t([[0], [10], [20], [30], [40]])
    a, f2 = A.bucketing(x, f=1, rng=torch.Generator().manual_seed(7))
    b, _ = A.bucketing(x, f=1, rng=torch.Generator().manual_seed(7))
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(7))
    expected = torch.stack([x[perm[0:2]].mean(0), x[perm[2:4]].mean(0), x[perm[4:]].mean(0)])
    assert torch.equal(a, b) and close(a, expected)
    assert f2 == 1 and a.shape == (3, 1)
    with pytest.raises(ValueError, match="Generator"):
        A.bucketing(x, f=1)


def test_bucketing_pipeline_checks_n_and_f_after_each_step():
    msg = A.check_pipeline("cwtm", 10, 3, pre=["bucketing"])
    assert "after bucketing(s=2) n=5, f=3" in msg and "got n=5, f=3" in msg
    assert A.check_pipeline("cwtm", 10, 2, pre=["bucketing"]) is None
    assert "unknown pre-aggregation" in A.check_pipeline("cwtm", 10, 2, pre=["shuffle"])
    assert "'size'" in A.check_pipeline("cwtm", 10, 2, pre=["bucketing"],
                                        pre_params={"bucketing": {"size": 3}})
    agg = A.build("cwtm", f=2, pre=["bucketing"], pre_params={"bucketing": {"s": 2}})
    x = torch.randn(10, 3)
    r1 = agg(x, torch.Generator().manual_seed(1))
    r2 = agg(x, torch.Generator().manual_seed(1))
    assert torch.equal(r1, r2)
    with pytest.raises(ValueError, match="n=5, f=3"):
        A.build("cwtm", f=3, pre=["bucketing"])(x, torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="unknown parameter"):
        A.build("cwtm", f=1, params={"beta": 0.1})


@pytest.mark.parametrize("name", ["cwtm", "median", "meamed", "trimmed_mean"])
@pytest.mark.parametrize("n", [10, 60])  # the sorting network and the row sort
def test_threads_over_column_chunks_give_the_same_result_bit_for_bit(name, n):
    x = torch.randn(n, 250_001, generator=torch.Generator().manual_seed(n))  # above _THREADED_MIN
    x[3, 17] = float("nan")
    one = A.REGISTRY[name](x, f=2)
    try:
        A.set_threads(3)
        three = A.REGISTRY[name](x, f=2)
    finally:
        A.set_threads(1)
    assert torch.equal(one, three)
