"""Everything that touches MPI, apart from the two entry points.

- :func:`abort_on_error` turns an uncaught exception on any rank into an
  ``MPI_Abort`` of the whole job, with the rank and traceback on stderr, so a
  failure never leaves the other ranks waiting in a collective forever.
- :func:`agree` makes every rank leave together when one of them found an
  error before work started (bad configuration, missing data).
- Buffer collectives on flat float32 arrays (uppercase mpi4py calls, no
  pickle), each counting the bytes it moves in a :class:`Traffic` counter.
- :func:`wait` completes a nonblocking request by polling with short
  sleeps: a rank waiting for others gives its core away instead of spinning
  inside MPI, which matters when ranks outnumber cores (the usual case on a
  laptop: 11 ranks on 2 cores).

This module imports no other mpisim module.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import traceback
from collections import defaultdict
from typing import Callable, Sequence

import numpy as np
from mpi4py import MPI
from mpi4py.util.dtlib import from_numpy_dtype

__all__ = ["MPI", "abort_on_error", "agree", "wait", "Traffic", "bcast", "gatherv_rows",
           "scatterv_rows", "gather_small", "split"]


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


def wait(request: MPI.Request, *, max_sleep: float | None = None) -> None:
    """Complete ``request``, sleeping between polls so that a waiting rank yields its core.

    Sleeps start at 20 microseconds and double up to ``max_sleep`` (default
    ``MAX_SLEEP``, set by the environment variable MPISIM_MAX_SLEEP): short
    waits stay cheap, long ones cost little CPU.
    """
    max_sleep = MAX_SLEEP if max_sleep is None else max_sleep
    if max_sleep <= 0:
        request.Wait()
        return
    sleep = 2e-5
    while not request.Test():
        time.sleep(sleep)
        sleep = min(2 * sleep, max_sleep)


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


_READY_TAG = 31_000  # point-to-point tag of bcast's "data ready" notes
_READY = np.zeros(1, dtype=np.int8)


def bcast(comm: MPI.Comm, buf: np.ndarray, *, root: int, traffic: Traffic | None = None,
          category: str = "protocol") -> None:
    """Broadcast the flat array ``buf`` from ``root`` in place (every rank of comm calls it).

    The other ranks first wait, sleeping, for a one-byte note from the root
    that the data is ready, then all enter a blocking ``Bcast``. A plain
    blocking Bcast would make the waiting ranks spin through the root's
    filter step; a nonblocking ``Ibcast`` polled with sleeps stalls instead,
    because inner nodes of the broadcast tree only forward data while they
    are inside MPI (measured on 11 ranks on 2 cores: 33 ms against 3.5 ms).

    Counted as one copy sent to each other rank by the root, one received by each other rank.
    """
    if comm.Get_rank() == root:
        notes = [comm.Isend(_READY, dest=r, tag=_READY_TAG) for r in range(comm.Get_size()) if r != root]
        MPI.Request.Waitall(notes)
    else:
        wait(comm.Irecv(np.empty(1, dtype=np.int8), source=root, tag=_READY_TAG))
    comm.Bcast(buf, root=root)
    if traffic is not None:
        if comm.Get_rank() == root:
            traffic.count(category, sent=buf.nbytes * (comm.Get_size() - 1))
        else:
            traffic.count(category, received=buf.nbytes)


def gatherv_rows(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray | None, *,
                 rows_per_rank: Sequence[int], root: int, traffic: Traffic | None = None,
                 category: str = "protocol") -> None:
    """Gather each rank's rows (a_r, d) into ``recvbuf`` (sum a_r, d) on ``root``.

    Every rank of comm calls it with its own ``sendbuf`` (possibly 0 rows);
    ``rows_per_rank[r]`` is the row count of rank r, the same list on every
    rank. Counts and displacements are explicit.
    """
    d = sendbuf.shape[1] if sendbuf.ndim == 2 else 0
    mpi_type = from_numpy_dtype(sendbuf.dtype)
    if comm.Get_rank() == root:
        d = recvbuf.shape[1]
        counts = np.asarray(rows_per_rank, dtype=np.int64) * d
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        request = comm.Igatherv([sendbuf, mpi_type], [recvbuf, (counts, displs), mpi_type], root=root)
    else:
        request = comm.Igatherv([sendbuf, mpi_type], None, root=root)
    wait(request)
    if traffic is not None:
        mine = sendbuf.nbytes if comm.Get_rank() != root else 0
        traffic.count(category, sent=mine)
        if comm.Get_rank() == root:
            traffic.count(category, received=recvbuf.nbytes - sendbuf.nbytes)


def scatterv_rows(comm: MPI.Comm, sendbuf: np.ndarray | None, recvbuf: np.ndarray, *,
                  rows_per_rank: Sequence[int], root: int, traffic: Traffic | None = None,
                  category: str = "protocol") -> None:
    """Scatter rows of ``sendbuf`` (sum a_r, d) on ``root`` to each rank's ``recvbuf`` (a_r, d)."""
    mpi_type = from_numpy_dtype(recvbuf.dtype)
    if comm.Get_rank() == root:
        d = sendbuf.shape[1]
        counts = np.asarray(rows_per_rank, dtype=np.int64) * d
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        request = comm.Iscatterv([sendbuf, (counts, displs), mpi_type], [recvbuf, mpi_type], root=root)
    else:
        request = comm.Iscatterv(None, [recvbuf, mpi_type], root=root)
    wait(request)
    if traffic is not None:
        if comm.Get_rank() == root:
            traffic.count(category, sent=sendbuf.nbytes - recvbuf.nbytes)
        else:
            traffic.count(category, received=recvbuf.nbytes)


def gather_small(comm: MPI.Comm, obj, *, root: int = 0):
    """Gather a small picklable object (a control message) to ``root``."""
    return comm.gather(obj, root=root)


def split(comm: MPI.Comm, color: int | None, key: int = 0) -> MPI.Comm | None:
    """``Comm_split``; ``color=None`` leaves this rank out (returns None). Every rank calls it."""
    sub = comm.Split(MPI.UNDEFINED if color is None else color, key)
    return None if sub == MPI.COMM_NULL else sub
