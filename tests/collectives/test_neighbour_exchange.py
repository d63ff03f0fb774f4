"""The decentralized mode's exchange on 4 real ranks (pytest-mpi).

Every message carries its (sender, receiver) in its values, so each receiver
can check that it got exactly what its neighbours meant for it, including
the different vectors of two-faced Byzantine nodes.
"""

import numpy as np
import pytest
import torch

from mpisim.graphs.exchange import GraphPlan, MessagePool
from mpisim.mpi import comm as mpi
from mpisim.placement import Placement

pytestmark = pytest.mark.mpi(min_size=3)



def test_exchange_sends_any_rows_in_order_with_unequal_counts(world):
    d = 3
    size, rank = world.size, world.rank
    # Rank r sends r + 1 rows (chosen out of order) to each other rank.
    block = np.arange(10 * d, dtype=np.float32).reshape(10, d) + 1000 * rank
    rows = [9 - k for k in range(rank + 1)]
    send_rows = {s: rows for s in range(size) if s != rank}
    recv_rows = {s: s + 1 for s in range(size) if s != rank}
    exchange = mpi.NeighbourExchange(world, d=d, send_rows=send_rows, recv_rows=recv_rows)
    recv = np.zeros((exchange.rows_in, d), dtype=np.float32)
    traffic = mpi.Traffic()

    exchange.exchange(block, recv, traffic=traffic)

    for s in range(size):
        if s == rank:
            continue
        got = recv[exchange.recv_offset[s]: exchange.recv_offset[s] + s + 1]
        expected = np.stack([np.arange(d) + (9 - k) * d + 1000 * s for k in range(s + 1)])
        np.testing.assert_array_equal(got, expected)
    assert traffic.sent["protocol"] == 4 * d * (rank + 1) * (size - 1)
    exchange.free()


@pytest.mark.parametrize("two_faced", [True, False])
def test_every_node_receives_what_its_neighbours_meant_for_it(world, two_faced):
    n, per_rank, d = 2 * world.size, 2, 4
    rng = np.random.default_rng(5)
    upper = np.triu(rng.random((n, n)) < 0.6, 1)
    adj = upper | upper.T
    plan = GraphPlan(Placement(n, per_rank), frozenset({1, 4}), two_faced, adj)
    state = MessagePool(plan, world.rank, d)
    exchange = mpi.NeighbourExchange(world, d=d, send_rows=state.send_rows, recv_rows=state.recv_counts)

    def code(i, j):  # what node i sends to node j
        if i in plan.byzantine and two_faced:
            return 1000.0 * i + j
        return 1000.0 * i + 999

    for k, i in enumerate(state.nodes):
        state.models[k].fill_(1000.0 * i + 999)
    for (i, j), row in state.message_row.items():
        state.pool[row].fill_(code(i, j if j >= 0 else 999) if j >= 0 else 1000.0 * i + 999)

    exchange.exchange(state.pool.numpy(), state.incoming.numpy())

    for j in state.nodes:
        got = state.received(j)[:, 0].tolist()
        expected = [code(int(i), j) for i in plan.neighbours(j)]
        assert got == expected, (j, got, expected)
        assert torch.all(state.received(j) == state.received(j)[:, :1])  # whole rows
    exchange.free()
