"""Pure-tier tests of mpisim.rules.clipping: static clipping and ARC on hand-worked blocks,
their composition with nnm and bucketing, and their sharded form (column slices in threads)."""

import math
from threading import Thread

import pytest
import torch

from mpisim import registry
from mpisim.rules import aggregators as A
from mpisim.rules import clipping as C  # registers "clipping" and "arc"
from mpisim.testing import _Exchange, _Slice

NAN, INF = math.nan, math.inf

# Norms 5, 1 and 10.
X3 = torch.tensor([[3.0, 4.0],
                   [0.0, 1.0],
                   [6.0, 8.0]])


def sliced(step, x, cuts, **kwargs):
    """``step`` run on column slices of x in threads summing through a Sharding; the slices' rows joined."""
    parts = [slice(a, b) for a, b in zip((0, *cuts), (*cuts, x.shape[1]))]
    exchange = _Exchange(len(parts))
    outputs = [None] * len(parts)

    def run(i):
        try:
            outputs[i] = step(x[:, parts[i]].contiguous(), sharding=_Slice(exchange, i), **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            outputs[i] = exc
            exchange.barrier.abort()

    threads = [Thread(target=run, args=(i,)) for i in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for out in outputs:
        if isinstance(out, BaseException):
            raise out
    if isinstance(outputs[0], tuple):
        assert len({out[1] for out in outputs}) == 1
        return torch.cat([out[0] for out in outputs], dim=1), outputs[0][1]
    return torch.cat(outputs)


# --------------------------------------------------------------------------- #
# Registry

def test_both_steps_are_registered_with_whole_row_sums():
    for name in ("clipping", "arc"):
        entry = registry.pre_aggregators.entry(name)
        assert entry.origin == "mpisim" and entry.reference and entry.description
        assert entry.properties["coordinatewise"] is False and entry.properties["sharding"] is True
        assert entry.properties["out"](10, 3) == (10, 3)
        assert A.sharding_problem("cwtm", pre=(name,)) is None
    assert A.param_defaults("clipping") == {"c": 2.0}
    assert A.param_defaults("arc") == {}


def test_checks_name_the_parameter_and_the_bound():
    assert "c must be a finite number > 0" in A.PRE_REGISTRY["clipping"].check(5, 1, c=0.0)
    assert "c must be" in A.PRE_REGISTRY["clipping"].check(5, 1, c=math.inf)
    assert A.PRE_REGISTRY["clipping"].check(4, 2) is None          # no bound of its own
    msg = A.PRE_REGISTRY["arc"].check(4, 2)
    assert msg.startswith("arc") and "n=4" in msg and "f=2" in msg
    assert A.check_pipeline("cwtm", 5, 2, pre=("arc",)) is None
    assert "arc" in A.check_pipeline("cwtm", 4, 2, pre=("arc",))


def test_arc_count_is_the_papers_floor_in_integers():
    assert [C.arc_count(10, f) for f in range(5)] == [0, 1, 3, 4, 4]  # floor(2 f (10 - f) / 10)
    assert C.arc_count(3, 1) == 1 and C.arc_count(7, 0) == 0
    # 2 * 33 * 209 / 242 = 57 exactly; ByzFL's float int((2 * 33 / 242) * 209) gives 56.
    assert C.arc_count(242, 33) == 57
    assert int((2 * 33 / 242) * 209) == 56


# --------------------------------------------------------------------------- #
# Hand-worked blocks

def test_clipping_3x2_by_hand():
    # c = 2: row 0 (norm 5) -> (3, 4) * 2/5 = (1.2, 1.6); row 1 (norm 1) stays; row 2 (norm 10) -> (1.2, 1.6).
    out, f2 = C.clipping(X3, f=1)

    assert f2 == 1
    torch.testing.assert_close(out, torch.tensor([[1.2, 1.6], [0.0, 1.0], [1.2, 1.6]]), rtol=0, atol=1e-7)


def test_clipping_with_a_larger_c_and_a_row_exactly_at_c():
    out, _ = C.clipping(X3, f=0, c=5.0)

    assert torch.equal(out[:2], X3[:2])                             # norm 5 = c and norm 1: unchanged
    torch.testing.assert_close(out[2], torch.tensor([3.0, 4.0]), rtol=0, atol=1e-7)


def test_arc_3x2_by_hand():
    # n = 3, f = 1: k = floor(2 * 1/3 * 2) = 1; the largest row (norm 10) is clipped to the next norm, 5.
    out, f2 = C.arc(X3, f=1)

    assert f2 == 1
    torch.testing.assert_close(out, torch.tensor([[3.0, 4.0], [0.0, 1.0], [3.0, 4.0]]), rtol=0, atol=1e-7)


def test_arc_5_rows_clips_the_two_largest_to_the_third():
    # n = 5, f = 2: k = floor(2 * 2/5 * 3) = 2. Norms 1, 20, 2, 10, 5 -> rows 1 and 3 clipped to norm 5.
    x = torch.tensor([[1.0, 0.0], [0.0, 20.0], [0.0, 2.0], [6.0, 8.0], [3.0, 4.0]])

    out, _ = C.arc(x, f=2)

    want = torch.tensor([[1.0, 0.0], [0.0, 5.0], [0.0, 2.0], [3.0, 4.0], [3.0, 4.0]])
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)


def test_arc_with_f0_is_the_identity_and_a_new_tensor():
    out, f2 = C.arc(X3, f=0)

    assert f2 == 0 and torch.equal(out, X3) and out.data_ptr() != X3.data_ptr()


def test_ties_do_not_matter_a_row_clipped_to_its_own_norm_is_unchanged():
    # Norms 5, 5, 1: k = 1 clips row 0 (the lower index of the tie) to norm 5, i.e. not at all.
    x = torch.tensor([[3.0, 4.0], [4.0, 3.0], [0.0, 1.0]])
    perm = torch.tensor([2, 1, 0])

    out, _ = C.arc(x, f=1)
    out_perm, _ = C.arc(x[perm], f=1)

    assert torch.equal(out, x)
    assert torch.equal(out_perm, out[perm])


def test_zero_rows_stay_zero_and_a_zero_threshold_zeroes_the_clipped_rows():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])

    clipped, _ = C.clipping(x, f=2)
    adaptive, _ = C.arc(x, f=2)    # k = 2: rows 1 and 0 (a tie at 0) clipped to the third norm, 0

    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0], [1.2, 1.6], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]),
                               rtol=0, atol=1e-7)
    assert torch.equal(adaptive, torch.zeros(5, 2))


def test_input_is_not_modified():
    x = torch.tensor([[NAN, 1.0], [3.0, 4.0], [6.0, 8.0], [0.5, 0.5], [1e30, 1e30]])
    before = x.clone()
    for step in (C.clipping, C.arc):
        step(x, f=2)
        torch.testing.assert_close(x, before, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("rows", [9, 40])  # 40 rows: arc clips fewer than half, so only those rows are written
@pytest.mark.parametrize("name", ["clipping", "arc"])
def test_overwrite_gives_the_same_bits_in_the_input_block(name, rows):
    x = block(n=rows, d=7, seed=rows)
    x[1, 2], x[3] = NAN, torch.tensor([3e38] * 7)  # a row to zero and one whose factor is float32-subnormal
    fresh, _ = A.PRE_REGISTRY[name](x.clone(), f=3)

    inbox = x.clone()
    out, _ = A.PRE_REGISTRY[name](inbox, f=3, overwrite=True)

    assert out.data_ptr() == inbox.data_ptr()
    assert out.numpy().tobytes() == fresh.numpy().tobytes()
    assert not torch.equal(torch.nan_to_num(out), torch.nan_to_num(x))  # something was clipped


def test_build_overwrites_only_when_told_and_a_block_it_made_itself():
    x = block()
    before = x.clone()

    kept = A.build("cwtm", f=2, pre=("nnm", "arc"))(x)        # arc runs in place on nnm's new block
    assert torch.equal(x, before)
    A.build("cwtm", f=2, pre=("arc",))(x)
    assert torch.equal(x, before)

    inbox = x.clone()
    got = A.build("cwtm", f=2, pre=("arc",), overwrite=True)(inbox)
    clipped, _ = C.arc(x, f=2)
    assert torch.equal(inbox, clipped) and torch.equal(got, A.REGISTRY["cwtm"](clipped, f=2))
    assert torch.equal(kept, A.REGISTRY["cwtm"](C.arc(A.PRE_REGISTRY["nnm"](x, f=2)[0], f=2)[0], f=2))


# --------------------------------------------------------------------------- #
# Non-finite and huge rows

def test_clipping_turns_non_finite_rows_into_zero_rows():
    x = torch.tensor([[NAN, 1.0], [INF, 0.0], [-INF, -INF], [0.3, 0.4]])

    out, _ = C.clipping(x, f=3)

    assert torch.equal(out, torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.3, 0.4]]))


def test_arc_zeroes_up_to_k_non_finite_rows():
    # n = 5, f = 2, k = 2: both bad rows are among the k largest (norm +inf) and have no direction.
    x = torch.tensor([[1.0, 1.0], [NAN, 1.0], [2.0, 2.0], [0.0, 0.0], [INF, -INF]])

    out, _ = C.arc(x, f=2)

    assert torch.equal(out, torch.tensor([[1.0, 1.0], [0.0, 0.0], [2.0, 2.0], [0.0, 0.0], [0.0, 0.0]]))


def test_arc_with_more_than_k_non_finite_rows_leaves_them():
    # n = 3, f = 1, k = 1: two rows of norm +inf make the threshold +inf, so nothing changes.
    x = torch.tensor([[NAN, 0.0], [INF, 1.0], [1.0, 1.0]])

    out, _ = C.arc(x, f=1)

    torch.testing.assert_close(out, x, rtol=0, atol=0, equal_nan=True)


def test_huge_rows_are_clipped_in_float64():
    x = torch.tensor([[3e38, 3e38], [1e-30, 0.0], [0.6, 0.8]])

    clipped, _ = C.clipping(x, f=1)
    adaptive, _ = C.arc(x, f=1)

    torch.testing.assert_close(clipped[0], torch.tensor([math.sqrt(2.0), math.sqrt(2.0)]), rtol=1e-6, atol=0)
    torch.testing.assert_close(adaptive[0], torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), rtol=1e-6, atol=0)
    assert torch.equal(clipped[1:], x[1:]) and torch.equal(adaptive[1:], x[1:])


# --------------------------------------------------------------------------- #
# Pipelines

def block(n=9, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.5, 8.0, n)[:, None]  # norms spread out
    return x


def test_nnm_then_arc_through_build():
    x = block()

    got = A.build("cwtm", f=2, pre=("nnm", "arc"))(x)

    mixed, f2 = A.PRE_REGISTRY["nnm"](x, f=2)
    clipped, f3 = C.arc(mixed, f=f2)
    assert torch.equal(got, A.REGISTRY["cwtm"](clipped, f=f3))
    assert not torch.equal(got, A.build("cwtm", f=2, pre=("nnm",))(x))  # arc did something


def test_arc_then_bucketing_through_build():
    x = block()

    got = A.build("median", f=2, pre=("arc", "bucketing"))(x, torch.Generator().manual_seed(3))

    clipped, f2 = C.arc(x, f=2)
    buckets, f3 = A.PRE_REGISTRY["bucketing"](clipped, f=f2, rng=torch.Generator().manual_seed(3))
    assert buckets.shape[0] == 5 and f3 == 2
    assert torch.equal(got, A.REGISTRY["median"](buckets, f=f3))


def test_clipping_with_a_parameter_through_build():
    x = block()

    got = A.build("mean", f=0, pre=("clipping",), pre_params={"clipping": {"c": 0.5}})(x)

    assert torch.linalg.vector_norm(got) <= 0.5 + 1e-6
    with pytest.raises(ValueError, match="clipping: c must be"):
        A.build("mean", f=0, pre=("clipping",), pre_params={"clipping": {"c": -1.0}})


# --------------------------------------------------------------------------- #
# Sharded: column slices summing their squared norms give the slices of the whole output

@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["clipping", "arc"])
def test_sharded_slices_equal_the_whole(name):
    step = A.PRE_REGISTRY[name]
    x = block(n=7, d=10)
    bad = x.clone()
    bad[1] = NAN
    bad[4, 3] = INF
    bad[5] = 1e30
    for data in (x, bad):
        whole, f_whole = step(data, f=2)

        parts, f_parts = sliced(step, data, (3, 4), f=2)

        assert f_parts == f_whole
        torch.testing.assert_close(parts, whole, rtol=1e-6, atol=0, equal_nan=True)


@pytest.mark.timeout(60)
def test_sharded_pipeline_nnm_arc_cwtm():
    x = block(n=7, d=10)
    whole = A.build("cwtm", f=2, pre=("nnm", "arc"))(x)

    def run(xs, sharding):
        return A.build("cwtm", f=2, pre=("nnm", "arc"), sharding=sharding)(xs)

    parts = sliced(run, x, (2, 7))

    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6)
