"""mpi.comm.run_scope on real ranks (pytest-mpi): what a run makes through the MPI layer is freed
when the scope ends (a sweep runs run after run in one job), and left alone on an exception."""

import numpy as np
import pytest
from mpi4py import MPI

from mpisim.mpi import comm as mpi

pytestmark = pytest.mark.mpi(min_size=3)



def made(world):
    """A sub-communicator, a shared window and a neighbourhood graph, as a run makes them."""
    sub = mpi.split(world, world.rank % 2, key=world.rank)
    block = mpi.SharedBlock(world, (world.size, 4), owner=0) if mpi.on_one_node(world) else None
    ring = {(world.rank + 1) % world.size: [0], (world.rank - 1) % world.size: [0]}
    exchange = mpi.NeighbourExchange(world, d=4, send_rows=ring, recv_rows={s: 1 for s in ring})
    return sub, block, exchange


def test_the_scope_frees_what_was_made_in_it_and_it_still_worked_inside(world):
    with mpi.run_scope():
        sub, block, exchange = made(world)
        rows = np.full((1, 4), world.rank, dtype=np.float32)
        got = np.empty((len(exchange.neighbours), 4), dtype=np.float32)
        exchange.exchange(rows, got)
        assert sorted(got[:, 0]) == sorted(float(s) for s in exchange.neighbours)
        assert sub.allreduce(1) == len(range(world.rank % 2, world.size, 2))

    assert sub == MPI.COMM_NULL and exchange.graph == MPI.COMM_NULL
    if block is not None:
        assert block.win == MPI.WIN_NULL and block.array is None
    kept = mpi.split(world, 0)  # outside any scope: nothing frees it
    assert kept != MPI.COMM_NULL
    kept.Free()


def test_an_exception_leaves_everything_to_the_abort_and_an_agreed_exit_frees(world):
    with pytest.raises(ValueError):
        with mpi.run_scope():
            sub, _, exchange = made(world)
            raise ValueError("a rank's error: the job is about to be aborted")
    assert sub != MPI.COMM_NULL and exchange.graph != MPI.COMM_NULL
    sub.Free()
    exchange.free()

    with pytest.raises(SystemExit):
        with mpi.run_scope():
            sub, _, exchange = made(world)
            raise SystemExit(2)  # every rank exits a refused configuration together
    assert sub == MPI.COMM_NULL and exchange.graph == MPI.COMM_NULL
