"""Buffer collectives of mpisim.mpi.comm, run on 3+ real ranks by pytest-mpi.

Run from tests/test_collectives.py as
``mpiexec -n 4 python -m pytest --with-mpi tests/collectives``.
Row counts differ between ranks on purpose (unequal message sizes).
"""

import numpy as np
import pytest

from mpisim.mpi import comm as mpi

pytestmark = pytest.mark.mpi(min_size=3)



def rows_of(rank, d):
    """Rank r contributes r rows (rank 0 none) with values identifying rank and row."""
    return np.array([[100 * rank + row + col / 1000 for col in range(d)] for row in range(rank)],
                    dtype=np.float32).reshape(rank, d)


def test_bcast_fills_every_rank_and_counts_bytes(world):
    buf = np.arange(7, dtype=np.float32) if world.rank == 1 else np.zeros(7, dtype=np.float32)
    traffic = mpi.Traffic()

    mpi.bcast(world, buf, root=1, traffic=traffic)

    np.testing.assert_array_equal(buf, np.arange(7, dtype=np.float32))
    if world.rank == 1:
        assert traffic.sent["protocol"] == 28 * (world.size - 1)
    else:
        assert traffic.received["protocol"] == 28


def test_gatherv_rows_with_unequal_counts(world):
    d = 5
    counts = list(range(world.size))
    mine = rows_of(world.rank, d)
    out = np.full((sum(counts), d), -1, dtype=np.float32) if world.rank == 0 else None
    traffic = mpi.Traffic()

    mpi.gatherv_rows(world, mine, out, rows_per_rank=counts, root=0, traffic=traffic)

    if world.rank == 0:
        np.testing.assert_array_equal(out, np.concatenate([rows_of(r, d) for r in range(world.size)]))
        assert traffic.received["protocol"] == out.nbytes
    else:
        assert traffic.sent["protocol"] == mine.nbytes


def test_scatterv_rows_with_unequal_counts(world):
    d = 3
    counts = [world.size - r for r in range(world.size)]  # root keeps rows too
    root = world.size - 1
    full = np.arange(sum(counts) * d, dtype=np.float32).reshape(-1, d) if world.rank == root else None
    mine = np.empty((counts[world.rank], d), dtype=np.float32)

    mpi.scatterv_rows(world, full, mine, rows_per_rank=counts, root=root)

    start = sum(counts[:world.rank])
    expected = np.arange(sum(counts) * d, dtype=np.float32).reshape(-1, d)[start:start + counts[world.rank]]
    np.testing.assert_array_equal(mine, expected)


def test_agree_spreads_one_ranks_error_to_all(world):
    error = "rank 2 cannot read its shard" if world.rank == 2 else None

    assert mpi.agree(world, error) == "rank 2 cannot read its shard"
    assert mpi.agree(world, None) is None


def test_split_leaves_out_ranks_without_colour(world):
    sub = mpi.split(world, None if world.rank == 0 else 1, key=world.rank)

    if world.rank == 0:
        assert sub is None
    else:
        assert sub.Get_size() == world.size - 1 and sub.Get_rank() == world.rank - 1
        total = sub.allreduce(world.rank)
        assert total == sum(range(1, world.size))
        sub.Free()


@pytest.mark.parametrize("servers", [1, 2])
def test_column_slices_reach_their_server_ranks_in_rank_order(world, servers):
    d = 11  # slices of 6 and 5 columns with two server ranks
    counts = [0] * servers + [r for r in range(1, world.size - servers + 1)]
    bounds = mpi.slice_bounds(d, servers)
    mine = rows_of(world.rank, d)[:counts[world.rank]]
    slices = mpi.ColumnSlices(world, d=d, rows_per_rank=counts, bounds=bounds)
    out = None
    if world.rank < servers:
        out = np.full((sum(counts), bounds[world.rank + 1] - bounds[world.rank]), -1, dtype=np.float32)
    traffic = mpi.Traffic()

    slices.exchange(mine, out, traffic=traffic)
    slices.free()

    if world.rank < servers:
        every = np.concatenate([rows_of(r, d)[:counts[r]] for r in range(world.size)])
        np.testing.assert_array_equal(out, every[:, bounds[world.rank]:bounds[world.rank + 1]])
        assert traffic.received["protocol"] == out.nbytes
    else:
        assert traffic.sent["protocol"] == mine.nbytes


def test_allgather_slices_gives_every_rank_the_whole_vector(world):
    d, servers = 10, 3
    bounds = mpi.slice_bounds(d, servers)
    assert bounds == [0, 4, 7, 10]
    buf = np.zeros(d, dtype=np.float32)
    if world.rank < servers:
        buf[bounds[world.rank]:bounds[world.rank + 1]] = np.arange(d)[bounds[world.rank]:bounds[world.rank + 1]]
    traffic = mpi.Traffic()

    mpi.allgather_slices(world, buf, bounds=bounds, traffic=traffic)

    np.testing.assert_array_equal(buf, np.arange(d, dtype=np.float32))
    if world.rank >= servers:
        assert traffic.received["protocol"] == 4 * d
