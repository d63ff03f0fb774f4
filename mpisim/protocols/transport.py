"""How a server-mode round moves its data: three transports behind one interface.

A round moves the model from the server to the agent ranks
(:meth:`Transport.share_model`) and the agents' rows to the server
(:meth:`Transport.collect`). Which way they travel is chosen once, when the
run is created (:func:`choose`), and the roles' rounds never ask again:

- :class:`Collectives`: ``Bcast`` of the model, ``Gatherv`` of the rows into
  one (n, width) block on rank 0, rows in agent order; the only one that
  moves encoded payloads and the vote's ballot (:meth:`Transport.share_ballot`).
- :class:`SharedWindows`: on one node, the model and the (n, d) block are
  shared-memory windows; only one-byte notes go through MPI. The bytes
  counted are those the collectives would have moved, and the models are
  the same bit for bit.
- :class:`Sharded`: the server is ranks 0..S-1, rank s owning the columns
  ``bounds[s]:bounds[s+1]`` of the model and of every row; the model is an
  ``Allgatherv`` of the slices, the rows one ``Alltoallw`` of strided column
  slices, and the rules' whole-row sums an ``Allreduce`` among the server
  ranks (:class:`SliceSums`).

Every method is collective over the world communicator, called by the
server ranks and the agent ranks alike, each with its own buffer: the
server's model (whole, its slice filled in) and its inbox, an agent rank's
model and its outbox. Buffers come from the transport (:meth:`inbox`,
:meth:`outbox`), since the shared windows are the buffers.
"""

from __future__ import annotations

import numpy as np
import torch

from ..mpi import comm as mpi
from ..rules import aggregators

SERVER = 0

__all__ = ["Transport", "Collectives", "SharedWindows", "Sharded", "SliceSums", "choose", "build"]


class Transport:
    """One server-mode run's way of moving the model down and the rows up (see the module)."""

    name = ""
    #: whether rank 0's model is current in every coordinate after a step (not when sharded)
    whole = True

    def __init__(self, world: mpi.Comm, plan):
        self.world, self.plan = world, plan
        self.rank = world.Get_rank()
        self.is_server = self.rank < plan.servers
        self.n = plan.placement.n
        self.ids = list(plan.placement.ids_of(self.rank)) if not self.is_server else []
        #: the rules' whole-row sums (one slice: the parts themselves)
        self.sums: aggregators.Sharding = aggregators.WHOLE

    def own(self, d: int) -> slice:
        """The coordinates of the model this server rank steps."""
        return slice(0, d)

    def inbox(self, width: int, dtype=np.float32) -> np.ndarray:
        """The server's (n, width) block for the gathered rows."""
        return np.empty((self.n, width), dtype=dtype)

    def outbox(self, width: int, dtype=np.float32) -> np.ndarray:
        """An agent rank's (hosted agents, width) block of rows to send."""
        return np.empty((len(self.ids), width), dtype=dtype)

    def share_model(self, flat: np.ndarray, traffic: mpi.Traffic) -> None:
        """The server's model into every agent rank's ``flat``."""
        raise NotImplementedError

    def collect(self, rows: np.ndarray, traffic: mpi.Traffic, counts: list[int] | None = None) -> np.ndarray | None:
        """Agent ranks' rows into the server's inbox; on the server, the (m, width) rows received, in agent
        order (None on the agents). ``rows`` is whichever this rank has: the server's inbox, or an agent
        rank's outbox whose first ``counts[rank]`` rows are sent. ``counts``: the rows of every rank this
        round (default: every hosted agent's, the whole outbox)."""
        raise NotImplementedError

    def share_ballot(self, buf: np.ndarray, traffic: mpi.Traffic) -> None:
        """A small array from rank 0 to every rank (the vote's ballot)."""
        raise NotImplementedError(f"the {self.name} transport moves no ballot")

    def assemble(self, flat: np.ndarray) -> None:
        """Give rank 0 every coordinate of the server's model (server ranks only; not counted)."""

    @property
    def total(self):
        """The sum over slices of a row's squared norm, for the projection (None: one slice)."""
        return None

    def summary(self) -> dict:
        return {"transport": self.name}


class Collectives(Transport):
    """``Bcast`` and ``Gatherv`` (rows in rank order, so in agent order)."""

    name = "collectives"

    def __init__(self, world: mpi.Comm, plan):
        super().__init__(world, plan)
        self.counts = plan.placement.counts()
        self._nothing: dict[tuple, np.ndarray] = {}

    def share_model(self, flat: np.ndarray, traffic: mpi.Traffic) -> None:
        mpi.bcast(self.world, flat, root=SERVER, traffic=traffic)

    def collect(self, rows: np.ndarray, traffic: mpi.Traffic, counts: list[int] | None = None) -> np.ndarray | None:
        counts = self.counts if counts is None else counts
        if self.is_server:
            key = (rows.shape[1], rows.dtype.str)
            nothing = self._nothing.setdefault(key, np.empty((0, rows.shape[1]), dtype=rows.dtype))
            received = rows[:sum(counts)]
            mpi.gatherv_rows(self.world, nothing, received, rows_per_rank=counts, root=SERVER, traffic=traffic)
            return received
        mpi.gatherv_rows(self.world, rows[:counts[self.rank]], None, rows_per_rank=counts, root=SERVER,
                         traffic=traffic)
        return None

    def share_ballot(self, buf: np.ndarray, traffic: mpi.Traffic) -> None:
        mpi.bcast(self.world, buf, root=SERVER, traffic=traffic)


class SharedWindows(Transport):
    """The model and the (n, d) block of a round in one node's shared memory.

    The server writes the model into one window and tells the agent ranks;
    each copies it into its model, computes its agents' rows straight into
    its rows of the block window, and tells the server, which filters the
    block where it lies.
    """

    name = "shared"

    def __init__(self, world: mpi.Comm, plan, d: int):
        super().__init__(world, plan)
        self.d = d
        self.model = mpi.SharedBlock(world, (d,), owner=SERVER)
        self.block = mpi.SharedBlock(world, (self.n, d), owner=SERVER)
        self.agent_ranks = list(range(plan.placement.first, plan.placement.world_size))

    @staticmethod
    def need(plan, d: int) -> int:
        return mpi.SharedBlock.footprint((d,)) + mpi.SharedBlock.footprint((plan.placement.n, d))

    def _window_rows(self, width: int, dtype) -> None:
        if width != self.d or np.dtype(dtype) != np.float32:
            raise ValueError(f"the shared windows hold float32 rows of {self.d} coordinates, "
                             f"not {np.dtype(dtype)} rows of {width}")

    def inbox(self, width: int, dtype=np.float32) -> np.ndarray:
        self._window_rows(width, dtype)
        return self.block.array

    def outbox(self, width: int, dtype=np.float32) -> np.ndarray:
        self._window_rows(width, dtype)
        return self.block.array[self.ids[0]:self.ids[-1] + 1]

    def share_model(self, flat: np.ndarray, traffic: mpi.Traffic) -> None:
        if self.is_server:
            np.copyto(self.model.array, flat)
            self.model.tell(self.agent_ranks)
            traffic.count("protocol", sent=flat.nbytes * (self.world.Get_size() - 1))
        else:
            self.model.wait_for([SERVER])
            np.copyto(flat, self.model.array)
            traffic.count("protocol", received=flat.nbytes)

    def collect(self, rows: np.ndarray, traffic: mpi.Traffic, counts: list[int] | None = None) -> np.ndarray | None:
        # An agent rank's k rows this round are the first k of its rows of the block; the server takes
        # them where they lie (a copy only when some agents sent nothing).
        width = rows.shape[1] * rows.itemsize
        if self.is_server:
            self.block.wait_for(self.agent_ranks)
            if counts is None or sum(counts) == self.n:
                traffic.count("protocol", received=rows.nbytes)
                return rows
            first = self.plan.placement.ids_of
            index = np.concatenate([np.arange(first(r).start, first(r).start + k) for r, k in enumerate(counts) if k]
                                   or [np.empty(0, dtype=np.int64)])
            traffic.count("protocol", received=len(index) * width)
            return rows[index]
        self.block.tell([SERVER])
        traffic.count("protocol", sent=(len(self.ids) if counts is None else counts[self.rank]) * width)
        return None


class SliceSums(aggregators.Sharding):
    """The sharded server's whole-row sums: an ``Allreduce`` of float64 parts among the server ranks.

    Every server rank calls :meth:`sum` with its slice's part at the same
    point of the rule; MPI's sum is commutative, so every rank gets the same
    total and takes the same decisions. ``bytes`` counts the parts reduced
    (server-internal traffic, not in the metrics' protocol bytes).
    """

    def __init__(self, comm: mpi.Comm):
        self.comm = comm
        self.slices = comm.Get_size()
        self.index = comm.Get_rank()  # server rank s holds the s-th slice of the columns
        self.bytes = 0

    def sum(self, part: torch.Tensor) -> torch.Tensor:
        part = part.to(torch.float64).contiguous()
        self.bytes += part.numel() * 8
        return torch.from_numpy(mpi.allreduce_array(self.comm, part.numpy(), op="sum"))


class Sharded(Transport):
    """S server ranks, each owning a contiguous slice of the columns (``server.ranks``)."""

    name = "sharded"
    whole = False

    def __init__(self, world: mpi.Comm, plan, d: int, server_comm: mpi.Comm | None):
        super().__init__(world, plan)
        self.server_comm = server_comm
        self.bounds = mpi.slice_bounds(d, plan.servers)
        self.slices = mpi.ColumnSlices(world, d=d, rows_per_rank=plan.placement.counts(), bounds=self.bounds)
        if self.is_server:
            self.sums = SliceSums(server_comm)

    def own(self, d: int) -> slice:
        return slice(self.bounds[self.rank], self.bounds[self.rank + 1])

    def inbox(self, width: int, dtype=np.float32) -> np.ndarray:
        return np.empty((self.n, self.bounds[self.rank + 1] - self.bounds[self.rank]), dtype=dtype)

    def share_model(self, flat: np.ndarray, traffic: mpi.Traffic) -> None:
        mpi.allgather_slices(self.world, flat, bounds=self.bounds, traffic=traffic)

    def collect(self, rows: np.ndarray, traffic: mpi.Traffic, counts: list[int] | None = None) -> np.ndarray | None:
        every = counts is None or list(counts) == self.plan.placement.counts()
        # The strided datatypes depend on the rows of each rank: a round with other counts builds its own.
        slices = self.slices if every else mpi.ColumnSlices(self.world, d=self.bounds[-1], rows_per_rank=counts,
                                                             bounds=self.bounds)
        try:
            if self.is_server:
                received = rows[:sum(counts)] if not every else rows
                slices.exchange(np.empty((0, self.bounds[-1]), dtype=rows.dtype), received, traffic=traffic)
                return received
            slices.exchange(rows if every else rows[:counts[self.rank]], None, traffic=traffic)
            return None
        finally:
            if not every:
                slices.free()

    def assemble(self, flat: np.ndarray) -> None:
        mpi.allgather_slices(self.server_comm, flat, bounds=self.bounds)

    @property
    def total(self):
        return self.sums.sum

    def summary(self) -> dict:
        return {**super().summary(), "server_ranks": self.plan.servers, "server_slices": self.bounds,
                "server_reduce_bytes": self.sums.bytes}


def choose(world: mpi.Comm, plan, *, plain: bool) -> str:
    """The transport of a run (every rank calls it, before the roles are built): "sharded" with
    several server ranks; on one node, for a ``plain`` run (float32 rows, no ballot), "shared" unless
    MPISIM_TRANSPORT says collectives; "collectives" otherwise."""
    if plan.servers > 1:
        return "sharded"
    one_node = mpi.on_one_node(world)
    if mpi.TRANSPORT == "collectives" or not plain:
        return "collectives"
    if not one_node and mpi.TRANSPORT == "shared":
        raise RuntimeError("MPISIM_TRANSPORT=shared needs every rank on one node")
    return "shared" if one_node else "collectives"


def build(kind: str, world: mpi.Comm, plan, d: int, server_comm: mpi.Comm | None = None) -> Transport:
    """The transport ``kind`` (from :func:`choose`) for a model of d coordinates; every rank calls it.

    Shared windows need room: a container's /dev/shm is often small (64 MB by
    default in Docker), and touching a shared page past its limit kills the
    process (SIGBUS, no message), so rank 0 measures the free space first and
    every rank decides from its figure: windows that do not fit with a margin
    fall back to the collectives; under MPISIM_TRANSPORT=shared, windows that
    do not fit at all stop every rank with a message (exit 2) before any page
    is touched."""
    if kind == "sharded":
        return Sharded(world, plan, d, server_comm)
    if kind == "collectives":
        return Collectives(world, plan)
    need = SharedWindows.need(plan, d)
    free = mpi.bcast_small(world, mpi.shared_memory_free() if world.Get_rank() == SERVER else None, root=SERVER)
    if free is not None and free > 2 * need:
        return SharedWindows(world, plan, d)
    if mpi.TRANSPORT != "shared":
        return Collectives(world, plan)
    if free is not None and free < need:
        from . import driver

        driver.exit_if(world, (
            f"MPISIM_TRANSPORT=shared: the server mode's shared-memory windows (the model and the "
            f"{plan.placement.n} x {d} block of messages) need {need:,} bytes of /dev/shm, which has "
            f"{free:,} bytes free; touching a page past that would kill the job (SIGBUS). Run with "
            f"MPISIM_TRANSPORT=auto (the default: the collectives when the windows do not fit) or "
            f"MPISIM_TRANSPORT=collectives, or give the node a larger /dev/shm (Docker: "
            f"`docker run --shm-size=1g ...`; as root: `mount -o remount,size=1G /dev/shm`)"))
    return SharedWindows(world, plan, d)
