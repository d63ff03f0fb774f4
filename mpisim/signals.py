"""SIGTERM and SIGUSR1 ask a run to checkpoint after the current round and stop; no MPI.

SLURM sends SIGUSR1 before a time limit (``--signal=B:USR1@120``) and
SIGTERM when it preempts or cancels a job. The entry points install the
handler (:func:`catch`) before their set-up, so a signal that arrives
while the data loads is not lost: the run then stops after its first
round, with a checkpoint. Once the run has decided to stop it ignores
further signals (:meth:`StopSignals.ignore`): a second SIGTERM during the
checkpoint's write or MPI's finalization would otherwise end the process
with that signal instead of exit code 75, and a SLURM script would not
requeue it.
"""

from __future__ import annotations

import signal

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """Notes the first stop signal; ``seen`` is its number (None before any)."""

    def __init__(self):
        self.seen: int | None = None
        self._before = {sig: signal.signal(sig, self._note) for sig in SIGNALS}

    def _note(self, signum, frame) -> None:
        if self.seen is None:
            self.seen = signum

    def ignore(self) -> None:
        """From now on the process is stopping by itself: later signals change nothing."""
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def restore(self) -> None:
        """The handlers from before :func:`catch` (the rounds are over)."""
        for sig, handler in self._before.items():
            signal.signal(sig, handler)


_installed: StopSignals | None = None


def catch() -> StopSignals:
    """Install the handler once per process (the entry point does it first) and return it."""
    global _installed
    if _installed is None:
        _installed = StopSignals()
    return _installed


def release() -> None:
    """Forget the handler (it is restored): the next :func:`catch` installs a fresh one."""
    global _installed
    if _installed is not None:
        _installed.restore()
        _installed = None
