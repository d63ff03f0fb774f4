"""A watchdog for rounds that never end (``run.round_timeout``).

On a cluster a host that dies, a link that is cut or a rank that is stopped leaves the other
ranks waiting in a collective for ever, and the job burns its whole allocation. With a
watchdog, every rank runs a thread beside its rounds:

- every ``interval`` seconds, each rank other than the root sends the root a heartbeat (two
  int64: its last finished round and a flag) on a communicator of the watchdog's own; the root
  notes when it last heard from each rank;
- the driver calls :meth:`Watchdog.tick` at the end of every round;
- when the root's current round has run for ``timeout`` seconds, the root names the ranks (and
  their hosts) it has not heard from for ``3 * interval`` seconds, removes the job's shared
  memory names and aborts the job (exit code :data:`EXIT_ROUND_TIMEOUT`);
- a rank whose round has run for ``timeout + grace`` seconds without the root ending the job
  (the root, its host or the link to it is gone) says so and ends itself: a rank cut off from
  the launcher does not wait for an abort that cannot reach it.

The heartbeats are a few dozen bytes a second per rank, sent by the thread; with
``run.round_timeout = 0`` (the default) there is no thread and no message. The thread needs
MPI_THREAD_MULTIPLE, which mpi4py asks for.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
from mpi4py import MPI

from .comm import MPICH_FILES, host_name, unlink_mapped_shm

__all__ = ["Watchdog", "EXIT_ROUND_TIMEOUT"]

# The exit code of a job ended by the watchdog.
EXIT_ROUND_TIMEOUT = 3
_BEAT, _BYE = 0, 1
_TAG = 7


class Watchdog:
    """Every rank of ``comm`` makes one (collective), calls :meth:`tick` after each round and
    :meth:`close` after the last (collective)."""

    def __init__(self, comm: MPI.Comm, *, timeout: float, root: int = 0, unit: str = "round",
                 first: int = 0):
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise RuntimeError("run.round_timeout needs MPI_THREAD_MULTIPLE; this MPI gives "
                               f"thread level {MPI.Query_thread()}")
        self.comm = comm.Dup()
        self.rank, self.size, self.root = comm.Get_rank(), comm.Get_size(), root
        self.hosts = self.comm.allgather(host_name())
        self.timeout, self.unit = float(timeout), unit
        # A heartbeat at least every second, and five in a timeout.
        self.interval = min(1.0, self.timeout / 5)
        self.grace = 3 * self.interval + 2.0
        self.round, self.since = first, time.monotonic()
        self._stop = threading.Event()
        self._sends: list[tuple[MPI.Request, np.ndarray]] = []
        self.heard = np.full(self.size, time.monotonic())
        self.rounds = np.full(self.size, first, dtype=np.int64)
        self._thread = threading.Thread(target=self._watch_root if self.rank == root else self._watch_rank,
                                        name="mpisim-watchdog", daemon=True)
        self._thread.start()

    def tick(self, t: int) -> None:
        """Round ``t`` ended on this rank (called by the main thread)."""
        self.round, self.since = t, time.monotonic()

    def close(self) -> None:
        """Stop the thread; the last heartbeats are exchanged and the communicator freed (collective)."""
        self._stop.set()
        self._thread.join()
        self.comm.Free()

    # ------------------------------------------------------------ the threads

    def _send(self, flag: int) -> None:
        message = np.array([self.round, flag], dtype=np.int64)
        self._sends.append((self.comm.Isend(message, dest=self.root, tag=_TAG), message))
        self._sends = [(r, m) for r, m in self._sends if not r.Test()]

    def _watch_rank(self) -> None:
        while not self._stop.wait(self.interval):
            self._send(_BEAT)
            if time.monotonic() - self.since > self.timeout + self.grace:
                self._end(self._rank_message())
        self._send(_BYE)
        MPI.Request.Waitall([r for r, _ in self._sends])  # the root receives until every rank said bye

    def _watch_root(self) -> None:
        # One receive a rank, not one from MPI.ANY_SOURCE: with the MPICH wheel (UCX between hosts,
        # shared memory inside one) an any-source receive stopped matching messages across hosts.
        others = [r for r in range(self.size) if r != self.root]
        boxes = {r: np.zeros(2, dtype=np.int64) for r in others}
        requests = [self.comm.Irecv(boxes[r], source=r, tag=_TAG) for r in others]
        gone = {self.root}
        poll = min(0.1, self.interval)
        while len(gone) < self.size or not self._stop.is_set():
            for i in MPI.Request.Testsome(requests) or ():
                source = others[i]
                box = boxes[source]
                self.heard[source], self.rounds[source] = time.monotonic(), box[0]
                if box[1] == _BYE:
                    gone.add(source)
                    requests[i] = MPI.REQUEST_NULL
                else:
                    requests[i] = self.comm.Irecv(box, source=source, tag=_TAG)
            if not self._stop.is_set() and time.monotonic() - self.since > self.timeout:
                self._end(self._root_message())
            time.sleep(poll)

    # ------------------------------------------------------------ the end

    def _where(self, rank: int) -> str:
        return f"rank {rank} ({self.hosts[rank]})"

    def _root_message(self) -> str:
        now = time.monotonic()
        silent = [r for r in range(self.size) if r != self.root and now - self.heard[r] > 3 * self.interval]
        head = (f"mpisim: {self.unit} {self.round + 1} did not end within run.round_timeout = {self.timeout:g} s "
                f"(rank {self.root} on {self.hosts[self.root]} waited {now - self.since:.1f} s)")
        if not silent:
            return (f"{head}; every rank still answers, so the {self.unit} is stuck or slower than the timeout "
                    f"(raise run.round_timeout). Ending the job (exit {EXIT_ROUND_TIMEOUT}).")
        lines = [f"  {self._where(r)}: silent for {now - self.heard[r]:.1f} s, last {self.unit} it reported: "
                 f"{self.rounds[r]}" for r in silent]
        hosts = sorted({self.hosts[r] for r in silent})
        return (f"{head}. Not answering: {len(silent)} rank{'s' if len(silent) > 1 else ''} on "
                f"{', '.join(hosts)}:\n" + "\n".join(lines) +
                f"\nEnding the job (exit {EXIT_ROUND_TIMEOUT}); resume from the run's last checkpoint.")

    def _rank_message(self) -> str:
        return (f"mpisim: {self._where(self.rank)}: {self.unit} {self.round + 1} did not end within "
                f"run.round_timeout = {self.timeout:g} s, and {self._where(self.root)}, which watches the "
                f"rounds, did not end the job within {self.grace:g} s more: it, its host or the link to it "
                f"does not answer. Ending this rank (exit {EXIT_ROUND_TIMEOUT}).")

    def _end(self, message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        unlink_mapped_shm(MPICH_FILES)
        # MPI_Abort reaches the other ranks through the launcher; if it cannot (a host cut off), or
        # hangs, this rank still goes.
        threading.Timer(5.0, os._exit, args=(EXIT_ROUND_TIMEOUT,)).start()
        if self.rank == self.root:
            time.sleep(0.5)  # the launcher forwards stderr through a pipe: let the message out first
            MPI.COMM_WORLD.Abort(EXIT_ROUND_TIMEOUT)
        os._exit(EXIT_ROUND_TIMEOUT)
