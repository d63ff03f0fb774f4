"""Everything that touches MPI: every communication of mpisim goes through here.

- :func:`abort_on_error` turns an uncaught exception on any rank into an
  ``MPI_Abort`` of the whole job, with the rank and traceback on stderr, so a
  failure never leaves the other ranks waiting in a collective forever.
- :func:`agree` makes every rank leave together when one of them found an
  error before work started (bad configuration, missing data).
- :func:`world` and :func:`abort_on_error` remove the names of MPICH's
  segments in /dev/shm that the job has mapped (:func:`unlink_mapped_shm`),
  so a crashed job does not leave them behind to fill the node's /dev/shm.
- Buffer collectives on flat float32 arrays (uppercase mpi4py calls, no
  pickle), each counting the bytes it moves in a :class:`Traffic` counter.
- :func:`wait` completes a nonblocking request by polling with short
  sleeps: a rank waiting for others gives its core away instead of spinning
  inside MPI, which matters when ranks outnumber cores (the usual case on a
  laptop: 11 ranks on 2 cores).

This module imports no other mpisim module.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import re
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from mpi4py import MPI
from mpi4py.util.dtlib import from_numpy_dtype

__all__ = ["MPI", "Comm", "world", "srun_world_error", "abort_on_error", "agree", "wait", "Traffic",
           "barrier", "bcast", "gatherv_rows", "scatterv_rows", "NeighbourExchange", "ColumnSlices",
           "allgather_slices", "slice_bounds", "SharedBlock", "on_one_node", "TRANSPORT",
           "shared_memory_free", "mapped_shm_files", "unlink_mapped_shm", "gather_small",
           "reduce_array", "allreduce_array", "split", "bcast_small", "any_rank"]

Comm = MPI.Comm


def world() -> MPI.Comm:
    """The job's world communicator (only the drivers' entry points ask for it).

    Exits first, with :func:`srun_world_error`'s message, when this process
    is one of srun's tasks but its MPI world does not hold all of them
    (MPISIM_WORLD_CHECK=0 turns the check off).
    """
    comm = MPI.COMM_WORLD
    error = None
    if os.environ.get("MPISIM_WORLD_CHECK", "1") != "0":
        error = srun_world_error(comm.Get_size(), os.environ)
    if error is not None:
        # Every task is its own singleton world here, so no collective can
        # reach the others: each one leaves on its own, task 0 with the whole story.
        first = os.environ.get("SLURM_PROCID", "0") == "0"
        raise SystemExit(error if first else error.splitlines()[0])
    _release_world_segment(comm)
    return comm


# Where launchers announce the size of the world they start: srun's PMI-2
# (PMI_SIZE, equal to the step's task count), MPICH's and Intel's hydra
# mpiexec (PMI_SIZE), Open MPI's mpirun (OMPI_COMM_WORLD_SIZE).
_ANNOUNCED_SIZES = ("SLURM_STEP_NUM_TASKS", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


def srun_world_error(size: int, environ) -> str | None:
    """Why an MPI world of ``size`` ranks cannot be right for an srun task, or None.

    srun sets SLURM_STEP_ID and SLURM_STEP_NUM_TASKS (and SLURM_PROCID,
    SLURM_NTASKS) in the environment of each task it starts; a batch script
    itself has SLURM_PROCID and the allocation's SLURM_NTASKS but no
    SLURM_STEP_ID, so a process started there by hand is not checked.
    ``mpiexec -n K`` inside an allocation starts its ranks under proxies that
    are themselves an srun step with one task per node (measured with
    MPICH's hydra under SLURM 22.05): those ranks carry that step's
    variables, SLURM_STEP_NUM_TASKS=1, but also the launcher's PMI_SIZE=K,
    which their world matches. So the rule is: a process in an srun step
    whose world size is none of the sizes announced to it
    (``_ANNOUNCED_SIZES``) is wrong. That is what happens when the MPI
    library and srun share no process manager interface (``srun --mpi=none``,
    or pmix for an MPI that speaks only PMI-2): each task initialises alone as
    a world of size 1, and would otherwise run a whole job by itself.
    """
    if "SLURM_STEP_ID" not in environ and "SLURM_STEPID" not in environ:
        return None
    announced = {}
    for name in _ANNOUNCED_SIZES:
        try:
            announced[name] = int(environ[name])
        except (KeyError, ValueError):
            continue
    if "SLURM_STEP_NUM_TASKS" not in announced:
        return None
    if size in announced.values():
        return None
    ntasks = announced["SLURM_STEP_NUM_TASKS"]
    task = environ.get("SLURM_PROCID", "?")
    return (f"mpisim: this process is srun task {task} of {ntasks} (SLURM_STEP_NUM_TASKS={ntasks}) "
            f"but its MPI world has {size} rank{'s' if size != 1 else ''}: stopping.\n"
            f"  The MPI library did not join srun's process manager (PMI), so each task would run "
            f"a job of its own.\n"
            f"  Fix: launch with `srun --mpi=pmi2` for the MPICH wheel (the default install), or the "
            f"cluster's `srun --mpi=pmix` for an MPI built for it (MPISIM_MPI=system ./launch/setup.sh);\n"
            f"  `srun --mpi=list` shows what this SLURM offers. Or start the ranks with "
            f"`mpiexec -n {ntasks} python -m ...` inside the allocation instead of srun.")


# Seconds between printing an uncaught exception and aborting the job.
ABORT_GRACE = 0.5


def abort_on_error(main: Callable[..., int | None]) -> Callable[..., int | None]:
    """Wrap an entry point: an exception on any rank aborts the whole MPI job.

    ``SystemExit`` passes through (a clean exit agreed by every rank); any
    other exception is printed with the rank number and the job is aborted
    with exit code 1.
    """

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - anything uncaught must end the job
            rank = MPI.COMM_WORLD.Get_rank() if MPI.Is_initialized() else "?"
            text = "".join(traceback.format_exception(exc))
            sys.stderr.write(f"[mpisim rank {rank}] uncaught {type(exc).__name__}, aborting the job:\n"
                             f"{text}")
            sys.stderr.flush()
            if MPI.Is_initialized() and not MPI.Is_finalized():
                # MPI_Abort lets no rank free its shared memory: remove the names now,
                # the memory lives until the last rank has unmapped it (when it dies).
                unlink_mapped_shm(MPICH_FILES)
                # The launcher forwards our stderr through a pipe and stops reading
                # it when the abort reaches it: give the message time to get out
                # (without this pause it was lost in about 1 abort of 15 here).
                time.sleep(ABORT_GRACE)
                MPI.COMM_WORLD.Abort(1)
            os._exit(1)

    return wrapped


def agree(comm: MPI.Comm, error: str | None) -> str | None:
    """Every rank calls this; returns the first rank's error message (not None) if any rank has one.

    Used after validation so that all ranks exit together (and non-zero) when
    any of them cannot proceed. A pickled control message: small.
    """
    errors = comm.allgather(error)
    return next((e for e in errors if e is not None), None)


# Longest sleep between two polls of a pending request, in seconds; 0 makes
# wait() block (spin) inside MPI. 0.2 ms was the fastest of 1, 0.2, 0.05 and
# 0 ms for LeNet rounds on 3 and 11 ranks of a 2-core machine.
MAX_SLEEP = float(os.environ.get("MPISIM_MAX_SLEEP", "2e-4"))


def wait(requests: MPI.Request | list[MPI.Request], *, max_sleep: float | None = None) -> None:
    """Complete a request (or all of a list), sleeping between polls so that a waiting rank yields its core.

    Sleeps start at 20 microseconds and double up to ``max_sleep`` (default
    ``MAX_SLEEP``, set by the environment variable MPISIM_MAX_SLEEP): short
    waits stay cheap, long ones cost little CPU.
    """
    requests = list(requests) if isinstance(requests, (list, tuple)) else [requests]
    max_sleep = MAX_SLEEP if max_sleep is None else max_sleep
    if max_sleep <= 0:
        MPI.Request.Waitall(requests)
        return
    sleep = 2e-5
    while not MPI.Request.Testall(requests):
        time.sleep(sleep)
        sleep = min(2 * sleep, max_sleep)


def _collectives_mode() -> str:
    """How the large collectives wait: "polled" or "blocking" (environment MPISIM_COLLECTIVES).

    "polled" (the default) starts a nonblocking collective and polls it with
    sleeps: fastest when the MPI moves large intranode messages in one copy
    (MPICH's CMA). Without that single copy, the data is pipelined through
    shared-memory cells that advance only while both sides poll, and a
    sleeping poll makes a 17 MB gather take 670 ms instead of 35 ms;
    "blocking" then has the ranks wait for each other with one-byte notes
    (sleeping) and enter a blocking collective together. It is the default
    when the environment turns MPICH's CMA off.
    """
    cma_off = any(os.environ.get(name) == "0"
                  for name in ("MPIR_CVAR_CH4_CMA_ENABLE", "MPICH_CH4_CMA_ENABLE"))
    mode = os.environ.get("MPISIM_COLLECTIVES") or ("blocking" if cma_off else "polled")
    if mode not in ("polled", "blocking"):
        raise ValueError(f"MPISIM_COLLECTIVES must be 'polled' or 'blocking', got {mode!r}")
    return mode


COLLECTIVES = _collectives_mode()


class Traffic:
    """Bytes moved by this rank, by category (e.g. "protocol", "adversary")."""

    def __init__(self):
        self.sent: dict[str, int] = defaultdict(int)
        self.received: dict[str, int] = defaultdict(int)

    def count(self, category: str, *, sent: int = 0, received: int = 0) -> None:
        self.sent[category] += int(sent)
        self.received[category] += int(received)

    def as_dict(self) -> dict:
        return {"sent": dict(self.sent), "received": dict(self.received)}


# Point-to-point tags of the one-byte notes exchanged before a blocking collective.
_READY_TAG, _GO_TAG = 31_000, 31_001
_NOTE = np.zeros(1, dtype=np.int8)


def notes(comm: MPI.Comm, *, to: Sequence[int] = (), sources: Sequence[int] = (),
          tag: int = _READY_TAG) -> None:
    """Send a one-byte note to every rank in ``to``; return once one has come from every rank in ``sources``.

    The waiting is done sleeping (:func:`wait`). Ranks use these notes to
    enter a *blocking* collective together once everyone's data is ready:
    waiting ranks sleep instead of spinning (which would take the core from
    a rank still computing), and during the transfer every rank is inside MPI.
    """
    inbox = np.empty(len(sources), dtype=np.int8)
    requests = [comm.Irecv(inbox[i:i + 1], source=s, tag=tag) for i, s in enumerate(sources)]
    requests += [comm.Isend(_NOTE, dest=r, tag=tag) for r in to]
    wait(requests)


def _others(comm: MPI.Comm, root: int) -> list[int]:
    return [r for r in range(comm.Get_size()) if r != root]


def _from_root(comm: MPI.Comm, root: int) -> None:
    """The root's data is ready: the root tells every other rank, which waits for that, sleeping."""
    if comm.Get_rank() == root:
        notes(comm, to=_others(comm, root))
    else:
        notes(comm, sources=[root])


def _to_root(comm: MPI.Comm, root: int) -> None:
    """Every rank's data is ready: each tells the root, then waits, sleeping, for the root's go."""
    if comm.Get_rank() == root:
        notes(comm, sources=_others(comm, root))
        notes(comm, to=_others(comm, root), tag=_GO_TAG)
    else:
        notes(comm, to=[root])
        notes(comm, sources=[root], tag=_GO_TAG)


def bcast(comm: MPI.Comm, buf: np.ndarray, *, root: int, traffic: Traffic | None = None,
          category: str = "protocol") -> None:
    """Broadcast the flat array ``buf`` from ``root`` in place (every rank of comm calls it).

    The other ranks first wait, sleeping, for a one-byte note from the root
    that the data is ready, then all enter a blocking ``Bcast`` (whatever
    ``COLLECTIVES`` says). A plain blocking Bcast would make the waiting
    ranks spin through the root's filter step; a nonblocking ``Ibcast``
    polled with sleeps stalls instead, because inner nodes of the broadcast
    tree only forward data while they are inside MPI (measured on 11 ranks
    on 2 cores: 33 ms against 3.5 ms).

    Counted as one copy sent to each other rank by the root, one received by each other rank.
    """
    _from_root(comm, root)
    comm.Bcast(buf, root=root)
    if traffic is not None:
        if comm.Get_rank() == root:
            traffic.count(category, sent=buf.nbytes * (comm.Get_size() - 1))
        else:
            traffic.count(category, received=buf.nbytes)


def _row_layout(rows_per_rank: Sequence[int], d: int) -> tuple[np.ndarray, np.ndarray]:
    """Element counts and displacements of blocks of rows_per_rank[r] rows of d values, back to back."""
    counts = np.asarray(rows_per_rank, dtype=np.int64) * d
    return counts, np.concatenate([[0], np.cumsum(counts)[:-1]])


def gatherv_rows(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray | None, *,
                 rows_per_rank: Sequence[int], root: int, traffic: Traffic | None = None,
                 category: str = "protocol") -> None:
    """Gather each rank's rows (a_r, d) into ``recvbuf`` (sum a_r, d) on ``root``.

    Every rank of comm calls it with its own ``sendbuf`` (possibly 0 rows);
    ``rows_per_rank[r]`` is the row count of rank r, the same list on every
    rank. Counts and displacements are explicit. Waits as ``COLLECTIVES`` says.
    """
    mpi_type = from_numpy_dtype(sendbuf.dtype)
    if comm.Get_rank() == root:
        args = ([sendbuf, mpi_type], [recvbuf, _row_layout(rows_per_rank, recvbuf.shape[1]), mpi_type])
    else:
        args = ([sendbuf, mpi_type], None)
    if COLLECTIVES == "blocking":
        _to_root(comm, root)
        comm.Gatherv(*args, root=root)
    else:
        wait(comm.Igatherv(*args, root=root))
    if traffic is not None:
        mine = sendbuf.nbytes if comm.Get_rank() != root else 0
        traffic.count(category, sent=mine)
        if comm.Get_rank() == root:
            traffic.count(category, received=recvbuf.nbytes - sendbuf.nbytes)


def scatterv_rows(comm: MPI.Comm, sendbuf: np.ndarray | None, recvbuf: np.ndarray, *,
                  rows_per_rank: Sequence[int], root: int, traffic: Traffic | None = None,
                  category: str = "protocol") -> None:
    """Scatter rows of ``sendbuf`` (sum a_r, d) on ``root`` to each rank's ``recvbuf`` (a_r, d).

    Waits as ``COLLECTIVES`` says.
    """
    mpi_type = from_numpy_dtype(recvbuf.dtype)
    if comm.Get_rank() == root:
        args = ([sendbuf, _row_layout(rows_per_rank, sendbuf.shape[1]), mpi_type], [recvbuf, mpi_type])
    else:
        args = (None, [recvbuf, mpi_type])
    if COLLECTIVES == "blocking":
        _from_root(comm, root)
        comm.Scatterv(*args, root=root)
    else:
        wait(comm.Iscatterv(*args, root=root))
    if traffic is not None:
        if comm.Get_rank() == root:
            traffic.count(category, sent=sendbuf.nbytes - recvbuf.nbytes)
        else:
            traffic.count(category, received=recvbuf.nbytes)


def slice_bounds(d: int, parts: int) -> list[int]:
    """Boundaries of ``parts`` contiguous slices of d coordinates, as even as can be:
    slice s is [bounds[s], bounds[s + 1]), the first ``d % parts`` one longer."""
    return [s * (d // parts) + min(s, d % parts) for s in range(parts + 1)]


class ColumnSlices:
    """Every rank's rows sent in column slices to the first S ranks, with one ``Alltoallw``.

    The sharded server: rank s < S owns the columns ``bounds[s]:bounds[s + 1]``
    (of the d columns of every agent's row) and receives, from every rank r,
    that slice of r's ``rows_per_rank[r]`` rows, stacked in rank order into
    its (sum of rows, width) block. Rank r's send buffer is its (rows, d)
    block as it is: a strided MPI vector datatype per server rank picks the
    slice, so nothing is copied into a send buffer. Built once per run by
    every rank (no communication); :meth:`free` releases the datatypes.
    """

    def __init__(self, comm: MPI.Comm, *, d: int, rows_per_rank: Sequence[int], bounds: Sequence[int],
                 dtype=np.float32):
        self.comm, self.d, self.bounds = comm, d, list(bounds)
        size, rank = comm.Get_size(), comm.Get_rank()
        servers = len(self.bounds) - 1
        base = from_numpy_dtype(np.dtype(dtype))
        item = np.dtype(dtype).itemsize
        mine = int(rows_per_rank[rank])
        self._types = []
        send_counts, send_displs, send_types = [0] * size, [0] * size, [base] * size
        for s in range(servers):
            width = self.bounds[s + 1] - self.bounds[s]
            if mine and width:
                vector = base.Create_vector(mine, width, d).Commit()
                self._types.append(vector)
                send_counts[s], send_displs[s], send_types[s] = 1, self.bounds[s] * item, vector
        recv_counts, recv_displs = [0] * size, [0] * size
        self.width = self.bounds[rank + 1] - self.bounds[rank] if rank < servers else 0
        if rank < servers:
            offsets = np.concatenate([[0], np.cumsum(rows_per_rank)[:-1]])
            recv_counts = [int(a) * self.width for a in rows_per_rank]
            recv_displs = [int(o) * self.width * item for o in offsets]
        self._send = (send_counts, send_displs, send_types)
        _owned(self.free)
        self._recv = (recv_counts, recv_displs, [base] * size)
        self.servers = list(range(servers))
        self.sent = sum(mine * (self.bounds[s + 1] - self.bounds[s]) * item for s in range(servers) if s != rank)
        self.received = sum(c for r, c in enumerate(recv_counts) if r != rank) * item

    def exchange(self, block: np.ndarray, recv: np.ndarray | None, *, traffic: Traffic | None = None,
                 category: str = "protocol") -> None:
        """Send this rank's (rows, d) ``block``; fill ``recv`` (n, width) on a server rank. All ranks call it."""
        comm = self.comm
        received = [recv if recv is not None else np.empty(0, dtype=block.dtype), *self._recv]
        args = ([block, *self._send], received)
        if COLLECTIVES == "blocking":  # as _to_root, towards every server rank
            rank, others = comm.Get_rank(), [r for r in range(comm.Get_size()) if r not in self.servers]
            if rank in self.servers:
                notes(comm, sources=others)
                notes(comm, to=others, tag=_GO_TAG)
            else:
                notes(comm, to=self.servers)
                notes(comm, sources=self.servers, tag=_GO_TAG)
            comm.Alltoallw(*args)
        else:
            wait(comm.Ialltoallw(*args))
        if traffic is not None:
            traffic.count(category, sent=self.sent, received=self.received)

    def free(self) -> None:
        for dtype in self._types:
            dtype.Free()
        self._types = []


def host_name() -> str:
    """The name of the host this rank runs on, as MPI knows it (``MPI_Get_processor_name``)."""
    return MPI.Get_processor_name()


def on_one_node(comm: MPI.Comm) -> bool:
    """Whether every rank of ``comm`` shares one node's memory (every rank calls it)."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    same = node.Get_size() == comm.Get_size()
    node.Free()
    return same


def _transport_mode() -> str:
    """How the server mode's plain float32 rounds move the model and the gradients on one node:
    "shared" (one shared-memory window each, environment MPISIM_TRANSPORT, the default "auto"
    when every rank is on one node) or "collectives" (Bcast and Gatherv)."""
    mode = os.environ.get("MPISIM_TRANSPORT", "auto")
    if mode not in ("auto", "shared", "collectives"):
        raise ValueError(f"MPISIM_TRANSPORT must be 'auto', 'shared' or 'collectives', got {mode!r}")
    return mode


TRANSPORT = _transport_mode()


SHM_DIR = "/dev/shm"


def shared_memory_free(path: str = SHM_DIR) -> int | None:
    """Bytes free in the node's shared-memory file system (where MPICH maps shared windows);
    None if there is none (MPICH then maps its windows from files in /tmp)."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


# MPICH's files in /dev/shm (read in MPICH 5.0's source, seen with the wheel's
# 5.0.2): the segment of an MPI world on a node, which every rank of the node
# opens by name (shm_open) during MPI_Init and which the last rank to call
# MPI_Finalize removes: /mpich_shm_<FNV hash of the PMI key-value space>_<node>,
# about 3 MB at 3 ranks; a second one opened the same way, later, when a
# communicator gets several VCIs (mpich_vci_...); and the files behind shared
# windows and shared-memory collectives (mkstemp's mpich_shar_tmpXXXXXX),
# which MPICH removes itself as soon as every rank of the node has mapped them.
MPICH_WORLD_SEGMENT = re.compile(r"mpich_shm_[0-9a-f]+_[0-9]+")
MPICH_FILES = re.compile(r"mpich_(?:shm|vci)_[0-9a-f]+_[0-9]+|mpich_shar_tmp[A-Za-z0-9]{6}")


def mapped_shm_files(pattern: re.Pattern, maps: str = "/proc/self/maps") -> list[str]:
    """The files of /dev/shm whose name matches ``pattern`` and that this process has mapped:
    the very files (same device and inode), while they still have a name.

    Read from /proc/self/maps (Linux; elsewhere, none): a mapped file whose name was
    removed shows as "NAME (deleted)" there and is left out, and so is a file created
    since under the same name (another job's: its inode differs).
    """
    mapped = {}
    try:
        with open(maps) as lines:
            for line in lines:
                fields = line.rstrip("\n").split(maxsplit=5)
                if len(fields) < 6:
                    continue
                directory, _, name = fields[5].rpartition("/")
                if directory != SHM_DIR or not pattern.fullmatch(name):
                    continue
                major, minor = (int(x, 16) for x in fields[3].split(":"))
                mapped[fields[5]] = (os.makedev(major, minor), int(fields[4]))
    except (OSError, ValueError):
        return []
    found = []
    for path, (device, inode) in mapped.items():
        try:
            stats = os.stat(path)
        except OSError:
            continue
        if (stats.st_dev, stats.st_ino) == (device, inode):
            found.append(path)
    return found


def unlink_mapped_shm(pattern: re.Pattern = MPICH_FILES) -> list[str]:
    """Remove the names of the /dev/shm files of ``pattern`` that this process has mapped
    (:func:`mapped_shm_files`); returns the paths removed.

    The memory stays mapped, and usable, by every process that has it (removing a name
    is what MPICH does itself with its windows' files); it goes back to /dev/shm when
    the last of them unmaps it, by freeing it or by dying, whatever ends the job.
    Never raises: another rank of the node may have been first.
    """
    removed = []
    for path in mapped_shm_files(pattern):
        try:
            os.unlink(path)
        except OSError:
            continue
        removed.append(path)
    return removed


def _release_world_segment(comm: MPI.Comm) -> None:
    """Remove the name of MPICH's segment of this world on this node once every rank of the
    node has mapped it (every rank calls it, from :func:`world`).

    MPICH removes it only in MPI_Finalize: after an MPI_Abort or a kill -9 it stays in
    /dev/shm (3 MB for 3 ranks: about 20 fill Docker's 64 MB, and MPICH then cannot start), and
    a later job whose key-value space has the same name (a requeued SLURM job) opens it and
    hangs in MPI_Init. Without the name nothing remains whatever ends the job. Safe because
    MPICH 5.0 opens it by name only once per process, in MPI_Init, whose last step waits
    until every rank of the node has it mapped (``MPIDI_POSIX_comm_bootstrap``); windows and
    collectives use segments of their own; MPI_Finalize's removal of a missing name is
    ignored. The node's barrier makes sure of it even so. Checked with the wheel's MPICH
    5.0.2 by the MPI tier's tests (collectives, shared windows, resume after kill -9).
    Only MPICH: another MPI's files do not have MPICH's names.
    """
    if not MPI.Get_library_version().startswith("MPICH"):
        return
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    node.Barrier()
    node.Free()
    unlink_mapped_shm(MPICH_WORLD_SEGMENT)


_SHARED_TAG = 31_002


class SharedBlock:
    """A float32 array in one node's shared memory (an MPI-3 shared window), mapped by every rank.

    ``owner`` allocates it; every rank of comm (all on one node) gets a numpy
    view of the same memory, so a rank writes its rows where the owner reads
    them, and the owner writes what the others read, with no copy through
    MPI. The writer calls :meth:`tell` (the window's ``Sync``, then a one-byte
    note to each reader), the readers :meth:`wait_for` (the notes, then
    ``Sync``) before they read: the ``Sync`` on both sides orders the stores
    and the loads. Built collectively; freed with MPI at the end of the job.
    """

    # Pages of /dev/shm that MPICH adds to a window of its own (2 measured with 5.0.2), with a margin.
    EXTRA_PAGES = 4

    @classmethod
    def footprint(cls, shape: tuple[int, ...]) -> int:
        """Bytes of /dev/shm that a block of this shape takes once written: whole pages."""
        pages = -(-int(np.prod(shape)) * 4 // mmap.PAGESIZE)
        return (pages + cls.EXTRA_PAGES) * mmap.PAGESIZE

    def __init__(self, comm: MPI.Comm, shape: tuple[int, ...], *, owner: int = 0):
        self.comm = comm
        size = int(np.prod(shape)) * 4
        self.win = MPI.Win.Allocate_shared(size if comm.Get_rank() == owner else 0, 4, comm=comm)
        memory, _ = self.win.Shared_query(owner)
        self.array = np.ndarray(shape, dtype=np.float32, buffer=memory)
        self.win.Lock_all(MPI.MODE_NOCHECK)
        _owned(self.free)

    def free(self) -> None:
        """Release the window (collective); :attr:`array` must not be used afterwards."""
        self.array = None
        self.win.Unlock_all()
        self.win.Free()

    def tell(self, ranks: Sequence[int]) -> None:
        """What this rank wrote is in place: make it visible and send ``ranks`` a one-byte note each."""
        self.win.Sync()
        notes(self.comm, to=ranks, tag=_SHARED_TAG)

    def wait_for(self, ranks: Sequence[int]) -> None:
        """Wait, sleeping, for a note from every rank in ``ranks``, then see what they wrote."""
        notes(self.comm, sources=ranks, tag=_SHARED_TAG)
        self.win.Sync()


def allgather_slices(comm: MPI.Comm, buf: np.ndarray, *, bounds: Sequence[int],
                     traffic: Traffic | None = None, category: str = "protocol") -> None:
    """Fill the flat ``buf`` on every rank from its slices: rank s < S holds ``buf[bounds[s]:bounds[s + 1]]``.

    The sharded server's broadcast of the model (an in-place ``Allgatherv``
    to which the other ranks contribute nothing). As in :func:`bcast`, the
    ranks that only receive first wait, sleeping, for a one-byte note from
    every slice's owner, then all enter the blocking collective. Counted as
    the slice sent to every other rank, and what this rank lacked received.
    """
    servers = len(bounds) - 1
    size, rank = comm.Get_size(), comm.Get_rank()
    counts = [bounds[s + 1] - bounds[s] if s < servers else 0 for s in range(size)]
    displs = [bounds[s] if s < servers else bounds[-1] for s in range(size)]
    others = list(range(servers, size))
    if rank < servers:
        notes(comm, to=others)
    else:
        notes(comm, sources=list(range(servers)))
    comm.Allgatherv(MPI.IN_PLACE, [buf, (counts, displs), from_numpy_dtype(buf.dtype)])
    if traffic is not None:
        item = buf.itemsize
        mine = counts[rank] if rank < servers else 0
        traffic.count(category, sent=mine * item * (size - 1), received=(bounds[-1] - mine) * item)


class NeighbourExchange:
    """Rows of a float32 block sent to graph neighbours with one neighbourhood collective.

    Built once per run (every rank of ``comm`` calls the constructor: it
    creates a distributed-graph communicator with
    ``Create_dist_graph_adjacent``). Rank r sends, to each neighbour rank s,
    the rows ``send_rows[s]`` of its block (any rows, in that order) and
    receives ``recv_rows[s]`` rows from s, which land one after another in
    its receive block, ordered by source rank.

    The rows to send are first copied, neighbour after neighbour, into one
    contiguous send buffer (a node that sends its model to several
    neighbours is copied once for each, a two-faced node sends each its own
    row). Contiguous messages let MPICH move each in one copy (CMA) while the
    ranks poll with sleeps; rows described in place by an indexed datatype
    were packed through shared-memory cells that advance only while both
    sides are inside MPI, and 50 rows a rank took 55 ms an iteration instead
    of 1-2 ms (measured, 100 nodes on 2 ranks). Counts and displacements are
    always explicit (Open MPI mis-infers zero-size receives otherwise).
    """

    def __init__(self, comm: MPI.Comm, *, d: int, send_rows: dict[int, Sequence[int]],
                 recv_rows: dict[int, int]):
        self.d = d
        self.neighbours = sorted(set(send_rows) | set(recv_rows))
        # Symmetric by construction: every neighbour both sends and receives (possibly 0 rows).
        self.graph = comm.Create_dist_graph_adjacent(self.neighbours, self.neighbours, reorder=False)
        self._order = np.array([row for s in self.neighbours for row in send_rows.get(s, ())], dtype=np.int64)
        self._sendbuf = np.empty((len(self._order), d), dtype=np.float32)
        out_counts = [len(send_rows.get(s, ())) * d for s in self.neighbours]
        out_offsets = np.concatenate([[0], np.cumsum(out_counts)[:-1]]).astype(int) if out_counts else []
        self._send_spec = (out_counts, [int(o) * 4 for o in out_offsets], [MPI.FLOAT] * len(self.neighbours))
        counts = [recv_rows.get(s, 0) * d for s in self.neighbours]
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int) if counts else []
        self._recv_spec = (counts, [int(o) * 4 for o in offsets], [MPI.FLOAT] * len(self.neighbours))
        self.rows_out = sum(len(send_rows.get(s, ())) for s in self.neighbours)
        self.rows_in = sum(recv_rows.get(s, 0) for s in self.neighbours)
        self.recv_offset = {s: int(o) // d for s, o in zip(self.neighbours, offsets)}
        _owned(self.free)

    def exchange(self, block: np.ndarray, recv: np.ndarray, *, traffic: Traffic | None = None,
                 category: str = "protocol") -> None:
        """Send the chosen rows of ``block`` (R, d) and fill ``recv`` (rows_in, d); all ranks call it."""
        np.take(block, self._order, axis=0, out=self._sendbuf)
        send = [self._sendbuf, *self._send_spec]
        received = [recv, *self._recv_spec]
        if COLLECTIVES == "blocking":  # neighbours wait for each other sleeping, then exchange
            notes(self.graph, to=self.neighbours, sources=self.neighbours)
            self.graph.Neighbor_alltoallw(send, received)
        else:
            wait(self.graph.Ineighbor_alltoallw(send, received))
        if traffic is not None:
            traffic.count(category, sent=4 * self.d * self.rows_out, received=4 * self.d * self.rows_in)

    def free(self) -> None:
        if self.graph != MPI.COMM_NULL:
            self.graph.Free()


def gather_small(comm: MPI.Comm, obj, *, root: int = 0):
    """Gather a small picklable object (a control message) to ``root``: a list there, None elsewhere."""
    return comm.gather(obj, root=root)


def bcast_small(comm: MPI.Comm, obj, *, root: int = 0):
    """Broadcast a small picklable object (a control message) from ``root``; every rank gets it."""
    return comm.bcast(obj, root=root)


def any_rank(comm: MPI.Comm, flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (every rank calls it): a one-byte ``Iallreduce``,
    waited for with sleeps so that a rank that arrives early gives its core away."""
    mine = np.array([1 if flag else 0], dtype=np.uint8)
    out = np.zeros(1, dtype=np.uint8)
    wait(comm.Iallreduce(mine, out, op=MPI.MAX))
    return bool(out[0])


def barrier(comm: MPI.Comm) -> None:
    """Every rank of ``comm`` waits for all the others (every rank calls it)."""
    comm.Barrier()


_OPS = {"sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX}


def reduce_array(comm: MPI.Comm, local: np.ndarray, *, op: str, root: int = 0) -> np.ndarray | None:
    """Elementwise ``op`` ("sum", "min", "max") of every rank's ``local`` (same shape and dtype
    everywhere) on ``root``; None on the other ranks. Every rank calls it."""
    local = np.ascontiguousarray(local)
    out = np.empty_like(local) if comm.Get_rank() == root else None
    comm.Reduce(local, out, op=_OPS[op], root=root)
    return out


def allreduce_array(comm: MPI.Comm, local: np.ndarray, *, op: str = "sum") -> np.ndarray:
    """Elementwise ``op`` of every rank's ``local``, on every rank (every rank calls it)."""
    local = np.ascontiguousarray(local)
    out = np.empty_like(local)
    comm.Allreduce(local, out, op=_OPS[op])
    return out


def split(comm: MPI.Comm, color: int | None, key: int = 0) -> MPI.Comm | None:
    """``Comm_split``; ``color=None`` leaves this rank out (returns None). Every rank calls it."""
    sub = comm.Split(MPI.UNDEFINED if color is None else color, key)
    if sub == MPI.COMM_NULL:
        return None
    _owned(sub.Free)
    return sub


# ---------------------------------------------------------------- what a run made, freed when it ends

_SCOPES: list[list[Callable[[], None]]] = []


def _owned(free: Callable[[], None]) -> None:
    """Free this at the end of the innermost :func:`run_scope` (nothing happens outside one)."""
    if _SCOPES:
        _SCOPES[-1].append(free)


@contextlib.contextmanager
def run_scope():
    """The communicators, windows and datatypes made through this layer inside the block are
    freed when it ends (in reverse order, by every rank: the frees are collective), so that one
    job can run run after run (``mpisim sweep`` with ``block``) without their memory and context ids
    piling up. On ``SystemExit`` (an exit every rank agreed on) they are freed too; on any other
    exception they are left to the abort that follows."""
    _SCOPES.append([])
    try:
        yield
    except SystemExit:
        _free_all(_SCOPES.pop())
        raise
    except BaseException:
        _SCOPES.pop()
        raise
    else:
        _free_all(_SCOPES.pop())


def _free_all(frees: list[Callable[[], None]]) -> None:
    for free in reversed(frees):
        free()
