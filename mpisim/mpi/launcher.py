"""Start an mpisim job from Python (tests, benchmarks, sweeps): ``mpiexec -n K python -m ...``.

The launcher is, in order: ``$MPISIM_MPIEXEC`` (may hold options, e.g.
``"srun --mpi=pmi2"`` or ``"mpiexec --oversubscribe"``), the ``mpiexec``
beside this interpreter (the MPICH wheel's, in a venv), or the first
``mpiexec``/``mpirun`` on PATH (a cluster's own MPI).

A job runs in a process group of its own; on timeout the whole group is
killed, so no rank is left behind.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class LauncherError(RuntimeError):
    pass


def mpiexec_command() -> list[str]:
    """The launcher as an argument list (see the module docstring)."""
    if os.environ.get("MPISIM_MPIEXEC"):
        return shlex.split(os.environ["MPISIM_MPIEXEC"])
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise LauncherError("no mpiexec found: install the MPICH wheel (pip install mpich) "
                            "or set MPISIM_MPIEXEC")
    return [found]


@dataclass
class Completed:
    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


def run(nprocs: int, args: Sequence[str], *, timeout: float | None, cwd: str | os.PathLike | None = None,
        env: dict | None = None, capture: bool = True) -> Completed:
    """Run ``mpiexec -n nprocs python ARGS`` and wait at most ``timeout`` seconds (None: as long as it takes)."""
    cmd = [*mpiexec_command(), "-n", str(nprocs), sys.executable, *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    pipe = subprocess.PIPE if capture else None
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=pipe, stderr=pipe,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return Completed(cmd, proc.returncode, out or "", err or "")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return Completed(cmd, -signal.SIGKILL, out or "", err or "", timed_out=True)
