"""BRIDGE screening of neighbours' models: hand-worked examples and properties."""

import math

import pytest
import torch

from mpisim.rules import screening

ROBUST = ("bridge_t", "bridge_m", "bridge_k", "bridge_b")

# The bound on the degree m each screen needs, written out independently of
# the rule library.
BOUNDS = {
    "bridge_t": lambda m, b: m > 2 * b,
    "bridge_m": lambda m, b: m >= 2 * b,
    "bridge_k": lambda m, b: m > 2 * b + 1,
    "bridge_b": lambda m, b: m >= 4 * b + 2,
    "dgd": lambda m, b: True,
    "local": lambda m, b: True,
    "scclip": lambda m, b: True,
}


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def run(name, own, received, *, b):
    """screening.screen, with uniform weights for a weighted screen (scclip): the properties
    below hold for any weights that do not depend on the rows' order."""
    m = received.shape[0]
    uniform = torch.full((m + 1,), 1 / (m + 1), dtype=own.dtype)
    weights = {"weights": uniform} if screening.SCREENS[name].weighted else {}
    return screening.screen(name, own, received, b=b, **weights)


def _smallest_legal_degree(name, b):
    return next(m for m in range(0, 100) if BOUNDS[name](m, b))


# --------------------------------------------------------------------------
# BRIDGE-T, eq (7) without the gradient term
# --------------------------------------------------------------------------

def test_bridge_t_trims_b_from_each_side_and_averages_with_own():
    # m = 7 neighbours, b = 2, three coordinates in different orders.
    received = _t([[7, -7, 6], [-3, 3, 6], [2, -2, 6], [10, -10, 6],
                   [4, -4, 6], [0, 0, 6], [5, -5, 6]])
    own = _t([1, 2, 6])

    out = screening.bridge_t(own, received, b=2)

    # col 0: sorted -3 0 | 2 4 5 | 7 10 -> (2 + 4 + 5 + own 1) / (7 - 4 + 1) = 3
    # col 1: sorted -10 -7 | -5 -4 -2 | 0 3 -> (-11 + own 2) / 4 = -2.25
    # col 2: all 6 -> 6
    torch.testing.assert_close(out, _t([3.0, -2.25, 6.0]))


def test_bridge_t_degree_exactly_2b_plus_1_keeps_one_neighbour_value():
    # m = 5 = 2b + 1 with b = 2: the middle neighbour value and own, divided by 2.
    received = _t([[7, 0], [-3, 0], [2, 1], [10, 1], [4, 1]])
    own = _t([1, 3])

    out = screening.bridge_t(own, received, b=2)

    # col 0: sorted -3 2 | 4 | 7 10 -> (4 + 1) / 2; col 1: 0 0 | 1 | 1 1 -> (1 + 3) / 2
    torch.testing.assert_close(out, _t([2.5, 2.0]))


def test_bridge_t_b1_small_example():
    out = screening.bridge_t(_t([0.0]), _t([[1], [100], [2]]), b=1)

    assert out.tolist() == [1.0]         # keeps 2, (2 + 0) / 2


def test_bridge_t_with_b0_is_the_plain_average_with_own():
    gen = torch.Generator().manual_seed(0)
    own = torch.randn(50, generator=gen)
    received = torch.randn(6, 50, generator=gen)

    out = screening.bridge_t(own, received, b=0)

    expected = torch.cat((own[None], received)).mean(dim=0)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out, screening.dgd(own, received, b=0))


def test_bridge_t_never_trims_own():
    # Own is the extreme value in every coordinate; it must still count.
    received = _t([[1], [2], [3], [4], [5]])

    out = screening.bridge_t(_t([1000.0]), received, b=2)

    assert out.tolist() == [(3 + 1000) / 2]


def test_bridge_t_keeps_dtype_float64():
    own = torch.zeros(3, dtype=torch.float64)
    received = torch.ones(3, 3, dtype=torch.float64)

    out = screening.bridge_t(own, received, b=1)

    assert out.dtype == torch.float64
    assert out.tolist() == [0.5, 0.5, 0.5]


# --------------------------------------------------------------------------
# Non-finite and huge rows from at most b neighbours
# --------------------------------------------------------------------------

BAD_VALUES = [1e30, -1e30, math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("name", ROBUST)
@pytest.mark.parametrize("bad", [(1e30, 1e30), (math.nan, -math.inf), (math.inf, -1e30),
                                 (math.nan, math.nan), (-math.inf, -math.inf), "mixed"])
def test_b_bad_rows_cannot_leave_the_range_of_own_and_honest_values(name, bad):
    b = 2
    m = max(_smallest_legal_degree(name, b), 7)
    gen = torch.Generator().manual_seed(1)
    d = 40
    honest = torch.randn(m - b, d, generator=gen)
    own = torch.randn(d, generator=gen)
    if bad == "mixed":  # every coordinate of every bad row its own bad value
        idx = torch.randint(0, len(BAD_VALUES), (b, d), generator=gen)
        bad_rows = torch.tensor(BAD_VALUES, dtype=torch.float32)[idx]
    else:
        bad_rows = torch.tensor(bad, dtype=torch.float32)[:, None].expand(b, d)
    # Bad neighbours at both ends of the id order and in the middle.
    received = torch.cat((bad_rows[:1], honest[:3], bad_rows[1:], honest[3:]))

    out = screening.screen(name, own, received, b=b)

    good = torch.cat((own[None], honest))
    assert torch.isfinite(out).all()
    assert (out >= good.min(dim=0).values - 1e-6).all()
    assert (out <= good.max(dim=0).values + 1e-6).all()


def test_bridge_t_b_huge_rows_are_trimmed_exactly():
    # Two rows at +1e30 take both top slots: the result is what the honest
    # values give when only their 2 smallest are trimmed.
    honest = _t([[1], [2], [3], [4], [5]])
    received = torch.cat((_t([[1e30], [1e30]]), honest))

    out = screening.bridge_t(_t([0.0]), received, b=2)

    assert out.tolist() == [(3 + 4 + 5 + 0) / 4]


def test_bridge_t_with_more_bad_rows_than_b_is_not_protected():
    # The range test above can fail: one bad row too many reaches the result.
    received = _t([[1e30], [1e30], [1], [2], [3]])

    out = screening.bridge_t(_t([0.0]), received, b=1)

    assert out.item() > 1e29


# --------------------------------------------------------------------------
# Journal-version variants over own + received
# --------------------------------------------------------------------------

def test_bridge_m_is_the_coordinatewise_median_of_own_and_received():
    # Odd count: own 10 with 1 2 3 4 -> 3. Even count: own 0 with 5 1 3 -> (1 + 3) / 2.
    odd = screening.bridge_m(_t([10.0, 0.0]), _t([[1, 5], [2, 1], [3, 3], [4, 7]]), b=2)
    even = screening.bridge_m(_t([0.0]), _t([[5], [1], [3]]), b=1)

    assert odd.tolist() == [3.0, 3.0]     # col 1: 0 1 3 5 7 -> 3
    assert even.tolist() == [2.0]


def test_bridge_k_returns_the_received_vector_with_the_smallest_krum_score():
    # n = 5 points 0 1 3 10 100 on a line, f = 1: k = n - f - 2 = 2 neighbours.
    # Scores: 0 -> 1 + 9 = 10, 1 -> 1 + 4 = 5, 3 -> 4 + 9 = 13, 10 -> 49 + 81.
    received = _t([[1, 0], [3, 0], [10, 0], [100, 0]])

    out = screening.bridge_k(_t([0.0, 0.0]), received, b=1)

    assert out.tolist() == [1.0, 0.0]


def test_bridge_k_can_return_own():
    # Points 2 (own), 1, 3, 10, 100: own scores 1 + 1 = 2, the best.
    out = screening.bridge_k(_t([2.0]), _t([[1], [3], [10], [100]]), b=1)

    assert out.tolist() == [2.0]


def test_bridge_b_picks_by_krum_then_averages_around_the_median():
    # n = 7 points (own 0; 1 4 5 6 50 -60), f = 1, theta = 5 picks by repeated
    # Krum: 4 (score 30), 1 (42, tie with 5 to the lower index), 5, 0, 6.
    # Picked {0 1 4 5 6}: median 4, the theta - 2f = 3 closest are 4 5 6 -> 5.
    # (The median of all seven would be 4, their mean 6/7.)
    received = _t([[1, 0], [4, 0], [5, 0], [6, 0], [50, 0], [-60, 0]])

    out = screening.bridge_b(_t([0.0, 0.0]), received, b=1)

    assert out.tolist() == [5.0, 0.0]


# --------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------

def test_dgd_averages_own_with_every_neighbour_whatever_b():
    own = _t([1, 2])
    received = _t([[3, 4], [5, 6]])

    assert screening.dgd(own, received, b=0).tolist() == [3.0, 4.0]
    assert screening.dgd(own, received, b=5).tolist() == [3.0, 4.0]
    assert screening.dgd(own, received[:0], b=0).tolist() == [1.0, 2.0]


def test_dgd_is_not_robust():
    out = screening.dgd(_t([0.0]), _t([[1e30], [1], [2]]), b=1)

    assert out.item() > 1e29


def test_local_returns_a_copy_of_own():
    own = _t([1, 2])

    out = screening.local(own, _t([[100, 100], [math.nan, 7]]), b=3)
    out += 1

    assert own.tolist() == [1.0, 2.0]
    assert out.tolist() == [2.0, 3.0]


# --------------------------------------------------------------------------
# Properties shared by every screen
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(screening.SCREENS))
def test_inputs_are_not_modified(name):
    b = 1
    m = max(_smallest_legal_degree(name, b), 3)
    gen = torch.Generator().manual_seed(2)
    own = torch.randn(30, generator=gen)
    received = torch.randn(m, 30, generator=gen)
    received[0, :5] = math.nan
    received[0, 5:] = 1e30
    own_before, received_before = own.clone(), received.clone()

    run(name, own, received, b=b)

    torch.testing.assert_close(own, own_before, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(received, received_before, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(screening.SCREENS))
def test_permuting_the_received_rows_does_not_change_the_result(name):
    # Bulyan's last picks use Krum with max(1, r - b - 2) neighbours; for
    # b <= 2 that is 1, where two mutual nearest vectors tie exactly and the
    # lower index wins, so only b >= 3 makes bridge_b order-free.
    b = 3 if name == "bridge_b" else 2
    m = max(_smallest_legal_degree(name, b), 7)
    gen = torch.Generator().manual_seed(3)
    own = torch.randn(64, generator=gen)
    received = torch.randn(m, 64, generator=gen)
    perm = torch.randperm(m, generator=gen)

    out = run(name, own, received, b=b)
    permuted = run(name, own, received[perm], b=b)

    torch.testing.assert_close(out, permuted, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(screening.SCREENS))
def test_output_has_shape_d_and_input_dtype(name):
    b = 1
    m = max(_smallest_legal_degree(name, b), 1)
    own = torch.zeros(5, dtype=torch.float64)
    received = torch.ones(m, 5, dtype=torch.float64)

    out = run(name, own, received, b=b)

    assert out.shape == (5,) and out.dtype == torch.float64


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(screening.SCREENS))
def test_check_accepts_exactly_the_degrees_the_screen_needs(name):
    for b in range(0, 4):
        for m in range(0, 16):
            msg = screening.check(name, m, b)
            assert (msg is None) == BOUNDS[name](m, b), (name, m, b, msg)
            if msg is not None:
                assert name in msg and f"m={m}" in msg and f"b={b}" in msg


@pytest.mark.parametrize("name", ROBUST)
def test_a_screen_called_below_its_bound_raises_with_the_check_message(name):
    b = 2
    m = _smallest_legal_degree(name, b) - 1
    own = torch.zeros(3)
    received = torch.zeros(m, 3)

    with pytest.raises(ValueError, match=f"{name}: needs degree .*got m={m}, b={b}"):
        screening.SCREENS[name](own, received, b=b)
    with pytest.raises(ValueError, match=f"m={m}, b={b}"):
        screening.screen(name, own, received, b=b)


def test_bridge_t_message_states_the_bound():
    assert screening.check("bridge_t", 4, 2).startswith(
        "bridge_t: needs degree m > 2b, got m=4, b=2")


@pytest.mark.parametrize("b", [-1, 1.5, True, None])
def test_b_must_be_a_nonnegative_integer(b):
    msg = screening.check("dgd", 3, b)

    assert msg is not None and "b must be an integer >= 0" in msg


def test_unknown_screen_lists_the_known_ones():
    msg = screening.check("trimmed", 5, 1)

    assert "unknown screening 'trimmed'" in msg
    for name in screening.SCREENS:
        assert name in msg
    with pytest.raises(ValueError, match="unknown screening 'trimmed'.*bridge_t"):
        screening.screen("trimmed", torch.zeros(2), torch.zeros(5, 2), b=1)


def test_mismatched_shapes_and_dtypes_are_rejected():
    with pytest.raises(ValueError, match=r"received must have shape \(m, 3\)"):
        screening.screen("bridge_t", torch.zeros(3), torch.zeros(5, 4), b=1)
    with pytest.raises(ValueError, match=r"own must have shape \(d,\)"):
        screening.screen("bridge_t", torch.zeros(1, 3), torch.zeros(5, 3), b=1)
    with pytest.raises(ValueError, match="float32"):
        screening.screen("bridge_t", torch.zeros(3), torch.zeros(5, 3, dtype=torch.float64), b=1)


def test_screens_run_on_a_realistic_size_quickly():
    # BRIDGE Section 5.1 scale: degree about 50 on 100 nodes, b = 10, the
    # linear model's 7,850 parameters.
    gen = torch.Generator().manual_seed(4)
    own = torch.randn(7850, generator=gen)
    received = torch.randn(50, 7850, generator=gen)

    for name in screening.SCREENS:
        out = run(name, own, received, b=10)
        assert out.shape == (7850,) and torch.isfinite(out).all()


# --------------------------------------------------------------------------
# Smallest degree, for the graph check and the config
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(screening.SCREENS))
def test_min_degree_is_the_first_degree_the_check_accepts(name):
    for b in range(0, 6):
        first = next(m for m in range(0, 200) if screening.check(name, m, b) is None)

        got = screening.min_degree(name, b)

        assert got == first == screening.SCREENS[name].min_degree(b), (name, b)
        assert got == _smallest_legal_degree(name, b)          # the bounds written out above
        # Monotone: every larger degree passes too (min_degree relies on it).
        assert all(screening.check(name, m, b) is None for m in range(first, first + 40))


@pytest.mark.parametrize("name", sorted(screening.SCREENS))
def test_min_degree_at_a_large_b(name):
    b = 40
    first = next(m for m in range(0, 400) if BOUNDS[name](m, b))

    assert screening.min_degree(name, b) == first


def test_min_degree_of_the_baselines_is_0():
    assert screening.min_degree("dgd", 7) == 0 and screening.min_degree("local", 7) == 0


@pytest.mark.parametrize("b", [-1, 1.5, True, None])
def test_min_degree_refuses_a_bad_b(b):
    with pytest.raises(ValueError, match=r"bridge_b: b must be an integer >= 0"):
        screening.min_degree("bridge_b", b)


def test_min_degree_refuses_an_unknown_screen():
    with pytest.raises(ValueError, match="unknown screening 'bulyan'.*bridge_b"):
        screening.min_degree("bulyan", 1)


def test_min_degree_reports_a_check_that_rejects_every_degree(monkeypatch):
    monkeypatch.setattr(screening, "_DEGREE_LIMIT", 1 << 10)

    with pytest.raises(ValueError, match="broken: no degree m up to 1,024 passes its check for b=1"):
        screening._first_passing_degree("broken", lambda m, b: "never", 1)


def test_describe_names_the_rule_and_its_bound():
    assert screening.describe("bridge_b") == "bridge_b (Bulyan: m >= 4b + 2)"
    assert screening.describe("bridge_t") == "bridge_t (trimmed mean: m > 2b)"
    assert screening.describe("dgd") == "dgd (plain average, not robust)"
    for name in screening.SCREENS:
        assert screening.describe(name).startswith(f"{name} (")
    with pytest.raises(ValueError, match="unknown screening"):
        screening.describe("nope")
