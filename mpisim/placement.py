"""Which MPI rank hosts which agent or node: pure bookkeeping, the same on every rank.

Agents (server mode) and nodes (decentralized mode) are numbered 0..n-1 and
dealt to ranks in blocks of ``per_rank`` consecutive ids, from rank
``first`` on (the server mode keeps rank 0 for the server); the last rank
may host fewer. Nothing in a run depends on this layout but where the work
is done: every random stream is a function of the seed and an id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Placement"]


@dataclass(frozen=True)
class Placement:
    """``n`` ids, ``per_rank`` to a rank, hosted by ranks ``first`` .. ``first + num_ranks - 1``."""

    n: int
    per_rank: int
    first: int = 0

    @property
    def num_ranks(self) -> int:
        """Number of ranks that host ids."""
        return math.ceil(self.n / self.per_rank)

    @property
    def world_size(self) -> int:
        """Ranks of the job: the hosting ones and the ``first`` ones before them."""
        return self.first + self.num_ranks

    def ids_of(self, rank: int) -> range:
        """Ids hosted by ``rank`` (empty for a rank before ``first``)."""
        if rank < self.first:
            return range(0)
        start = (rank - self.first) * self.per_rank
        return range(min(start, self.n), min(start + self.per_rank, self.n))

    def rank_of(self, i: int) -> int:
        """The rank hosting id ``i``."""
        if not 0 <= i < self.n:
            raise ValueError(f"id {i} is not in [0, {self.n - 1}]")
        return self.first + i // self.per_rank

    def counts(self) -> list[int]:
        """How many ids each rank of the job hosts, rank 0 first."""
        return [len(self.ids_of(r)) for r in range(self.world_size)]
