"""Who sends which model rows to whom in the decentralized mode: pure bookkeeping, no MPI.

A :class:`GraphPlan` is the run's graph with its Byzantine nodes and their
placement on ranks, the same on every rank. A :class:`MessagePool` is one
rank's float32 block of rows, laid out so that one neighbourhood collective
moves every message between ranks:

    [models of the hosted nodes | outgoing Byzantine messages | rows received from other ranks]

Models are row views, so the exchange sends straight from them; a message
between two nodes of the same rank is a read of the pool, not a transfer.
The protocol hands ``send_rows`` and ``recv_counts`` to the MPI layer's
neighbour exchange.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..placement import Placement

__all__ = ["GraphPlan", "MessagePool"]


@dataclass(frozen=True)
class GraphPlan:
    """The graph, its Byzantine nodes, and which rank hosts which node; the same on every rank."""

    placement: Placement
    byzantine: frozenset[int]
    two_faced: bool
    adj: np.ndarray  # (n, n) bool, symmetric

    @property
    def n(self) -> int:
        return self.placement.n

    def neighbours(self, node: int) -> np.ndarray:
        return np.flatnonzero(self.adj[node])

    def honest(self) -> list[int]:
        return [j for j in range(self.n) if j not in self.byzantine]

    def messages_of(self, node: int, to: Sequence[int]) -> list[tuple[int, int]]:
        """The distinct messages ``node`` sends to the nodes ``to``: (node, -1) for one vector to
        all, (node, j) for the vector meant for j alone (two-faced Byzantine nodes)."""
        if node in self.byzantine and self.two_faced:
            return [(node, int(j)) for j in to]
        return [(node, -1)] if len(to) else []


class MessagePool:
    """The models and message rows of one rank's nodes, in one float32 pool (module docstring)."""

    def __init__(self, plan: GraphPlan, rank: int, d: int):
        self.plan, self.rank, self.d = plan, rank, d
        placement = plan.placement
        self.nodes = list(placement.ids_of(rank))
        self.local = {j: k for k, j in enumerate(self.nodes)}
        row = len(self.nodes)
        # Outgoing Byzantine messages, one row per distinct message.
        self.message_row: dict[tuple[int, int], int] = {}
        for i in self.nodes:
            if i in plan.byzantine:
                for key in plan.messages_of(i, plan.neighbours(i)):
                    self.message_row[key] = row
                    row += 1
        self.num_out = row
        # What goes to each other rank, and what comes from it, in a canonical order.
        send_rows: dict[int, list[int]] = {}
        recv_keys: dict[int, list[tuple[int, int]]] = {}
        for s in range(placement.num_ranks):
            if s == rank:
                continue
            theirs = set(placement.ids_of(s))
            out = []
            for i in self.nodes:
                targets = [j for j in plan.neighbours(i) if j in theirs]
                for key in plan.messages_of(i, targets):
                    out.append(self.row_of_message(key))
            if out:
                send_rows[s] = out
            incoming = []
            for i in placement.ids_of(s):
                targets = [j for j in plan.neighbours(i) if j in self.local]
                incoming += plan.messages_of(i, targets)
            if incoming:
                recv_keys[s] = incoming
        self.send_rows = send_rows
        self.recv_keys = recv_keys
        num_in = sum(len(k) for k in recv_keys.values())
        self.pool = torch.zeros((self.num_out + num_in, d), dtype=torch.float32)
        self.models = self.pool[:len(self.nodes)]
        self.outgoing = self.pool[:self.num_out]
        self.incoming = self.pool[self.num_out:]
        # Pool row of every message a hosted node receives, in ascending neighbour id.
        remote_row = {}
        base = self.num_out
        for s in sorted(recv_keys):
            for key in recv_keys[s]:
                remote_row[key] = base
                base += 1
        self.inbox: dict[int, torch.Tensor] = {}
        for j in self.nodes:
            rows = []
            for i in plan.neighbours(j):
                key = (int(i), j) if (i in plan.byzantine and plan.two_faced) else (int(i), -1)
                rows.append(self.row_of_message(key) if i in self.local else remote_row[key])
            self.inbox[j] = torch.tensor(rows, dtype=torch.long)

    @property
    def recv_counts(self) -> dict[int, int]:
        """Rows this rank receives from each other rank."""
        return {s: len(keys) for s, keys in self.recv_keys.items()}

    def row_of_message(self, key: tuple[int, int]) -> int:
        """Pool row holding a message sent by a node of this rank."""
        sender = key[0]
        if sender in self.plan.byzantine:
            return self.message_row[key]
        return self.local[sender]

    def received(self, node: int) -> torch.Tensor:
        """(degree, d) matrix of what ``node`` received, rows in ascending neighbour id."""
        return self.pool.index_select(0, self.inbox[node])
