"""FLTrust (Cao et al., NDSS 2021) on hand-worked rows: trust scores, rescaling to the root's norm,
rows with no direction, and the same output on column slices as on the whole block."""

import math
from threading import Thread

import pytest
import torch

from mpisim.rules import aggregators
from mpisim.rules.fltrust import fltrust
from mpisim.testing import _Exchange, _Slice

ROOT = torch.tensor([1.0, 0.0])


def test_rows_are_weighted_by_their_cosine_with_the_root_and_rescaled_to_its_norm():
    x = torch.tensor([[2.0, 0.0],     # cos 1: weight 1, rescaled to [1, 0]
                      [0.0, 3.0],     # cos 0: weight 0
                      [-1.0, 0.0],    # cos -1: ReLU -> 0
                      [1.0, 1.0]])    # cos 1/sqrt2, rescaled to [1/sqrt2, 1/sqrt2]
    c = 1 / math.sqrt(2)
    want = (torch.tensor([1.0, 0.0]) + c * torch.tensor([c, c])) / (1 + c)
    torch.testing.assert_close(fltrust(x, f=1, root=ROOT), want)
    # the root's norm sets the scale, not the rows'
    torch.testing.assert_close(fltrust(x, f=1, root=3 * ROOT), 3 * want)


def test_rows_without_a_direction_weigh_nothing_and_no_trust_gives_zero():
    x = torch.tensor([[2.0, 0.0], [math.nan, 1.0], [math.inf, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(fltrust(x, f=2, root=ROOT), torch.tensor([1.0, 0.0]))
    assert torch.equal(fltrust(-x[:1], f=0, root=ROOT), torch.zeros(2))  # every score 0: no move
    assert torch.equal(fltrust(x[:1], f=0, root=torch.zeros(2)), torch.zeros(2))  # a root with no direction


def test_the_root_is_required_and_is_not_a_users_parameter():
    with pytest.raises(ValueError, match="root set"):
        fltrust(torch.ones(3, 2), f=0)
    assert "root" not in aggregators.param_defaults("fltrust")


def test_on_column_slices_each_returns_its_slice_of_the_whole_output():
    g = torch.Generator().manual_seed(0)
    x, root = torch.randn(7, 50, generator=g), torch.randn(50, generator=g)
    x[2] = -3 * root  # an opposed row
    whole = fltrust(x, f=2, root=root)
    cuts = [0, 17, 31, 50]
    exchange, outputs = _Exchange(3), [None] * 3

    def run(i):
        part = slice(cuts[i], cuts[i + 1])
        outputs[i] = fltrust(x[:, part].contiguous(), f=2, root=root[part], sharding=_Slice(exchange, i))

    threads = [Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    torch.testing.assert_close(torch.cat(outputs), whole)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e30, 3e38])
def test_bad_rows_leave_the_output_finite_and_no_larger_than_the_root_and_the_input_unchanged(value):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 5, generator=g)
    x[[1, 4, 7]] = value
    bits = x.view(torch.int32).clone()
    root = torch.randn(5, generator=g)
    out = fltrust(x, f=3, root=root)
    assert torch.isfinite(out).all() and out.norm() <= root.norm() * (1 + 1e-6)
    assert torch.equal(x.view(torch.int32), bits)


def test_the_order_of_the_rows_does_not_matter():
    g = torch.Generator().manual_seed(2)
    x, root = torch.randn(11, 8, generator=g), torch.randn(8, generator=g)
    perm = torch.randperm(11, generator=g)
    torch.testing.assert_close(fltrust(x[perm], f=2, root=root), fltrust(x, f=2, root=root))
