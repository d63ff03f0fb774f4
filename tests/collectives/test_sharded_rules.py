"""Every rule and pre-aggregation step on a block sharded by columns over the ranks (pytest-mpi).

Each rank holds a contiguous slice of the columns, as a server rank of the
sharded server does, and its rule's output must be that slice of the rule
run on the whole block: bit for bit for the coordinate-wise rules, to float
rounding for the rules that sum whole-row quantities over the slices.
"""

import pytest
import torch

from mpisim.mpi import comm as mpi
from mpisim.protocols.transport import SliceSums
from mpisim.rules import aggregators

pytestmark = pytest.mark.mpi(min_size=3)

COORDINATE_WISE = {"mean", "cwtm", "trimmed_mean", "median", "meamed", "majority_vote"}
SETTINGS = [(name, {}, ()) for name in sorted(aggregators.REGISTRY)] + [
    ("cwtm", {}, ("nnm",)), ("median", {}, ("bucketing",)), ("multikrum", {"m": 3}, ()),
    ("cc", {"iters": 3, "tau": 0.5}, ()), ("mom", {"groups": 6}, ()),
    # dnc drawing 17 of the 103 columns: the same draw over the whole d on every slice.
    ("dnc", {"b": 17, "niters": 3}, ()), ("dnc", {"b": 60, "c": 1.5}, ()),
    ("caf", {"tau_max": "all"}, ()), ("monna", {"idx": 4}, ()),
    ("mean", {}, ("clipping",)), ("cwtm", {}, ("nnm", "arc")), ("median", {}, ("arc", "bucketing")),
]



def block(n=12, d=103, seed=3):
    """Honest rows around a common mean, one far row and one NaN row; the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(n, d, generator=g) + torch.randn(d, generator=g)
    x[1] += 40.0
    x[8, 7] = float("nan")
    return x


@pytest.mark.parametrize("name, params, pre", SETTINGS, ids=lambda v: str(v))
def test_sharded_rule_returns_its_slice_of_the_whole_output(world, name, params, pre):
    if name == "threshold_on_norms":
        pytest.skip("takes the agents' sent norms; covered below")
    x = block()
    bounds = mpi.slice_bounds(x.shape[1], world.size)
    lo, hi = bounds[world.rank], bounds[world.rank + 1]
    f = 2
    whole = aggregators.build(name, f=f, params=params, pre=pre)
    # as the server builds it: clipping and arc scale the slice in place, which it gives up
    sharded = aggregators.build(name, f=f, params=params, pre=pre, sharding=SliceSums(world), overwrite=True)
    # fltrust's yardstick, the server's own gradient: here a row of its own, sliced like the block
    root = {"root": torch.linspace(-1.0, 2.0, x.shape[1])} if name == "fltrust" else {}
    expected = whole(x, torch.Generator().manual_seed(9), **root)[lo:hi]

    got = sharded(x[:, lo:hi].contiguous(), torch.Generator().manual_seed(9),
                  **{k: v[lo:hi] for k, v in root.items()})

    if name in COORDINATE_WISE and not pre:
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_threshold_on_norms_on_slices_matches_the_whole_output(world):
    x = block()
    bounds = mpi.slice_bounds(x.shape[1], world.size)
    lo, hi = bounds[world.rank], bounds[world.rank + 1]
    norms = torch.linalg.vector_norm(torch.nan_to_num(x), dim=1)
    expected = aggregators.threshold_on_norms(x, norms, f=2)[lo:hi]

    got = aggregators.threshold_on_norms(x[:, lo:hi], norms, f=2, sharding=SliceSums(world))

    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, equal_nan=True)
