"""What the two entry points share: reading the configuration on every rank, the progress bar."""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Callable, Sequence

from . import config
from .mpi import comm as mpi
from .config import ConfigError


@contextlib.contextmanager
def _quiet_unless(show: bool):
    """Silence stdout/stderr (argparse's --help and usage errors) on all ranks but one."""
    if show:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def read_config(world: mpi.MPI.Comm, argv: Sequence[str] | None, cls, validate: Callable, *,
                prog: str, description: str):
    """Parse and validate the configuration on every rank; all ranks exit together on any error.

    A bad configuration prints one message (rank 0) and every rank exits with
    code 2 before any work starts; ``--help`` and ``--print-config`` print once
    and exit 0. Every rank calls this (it ends with a collective).
    """
    rank = world.Get_rank()
    error, cfg, print_only = None, None, False
    try:
        with _quiet_unless(rank == 0):
            cfg, print_only = config.parse_args(cls, argv, prog=prog, description=description)
        validate(cfg, world.Get_size())
    except ConfigError as exc:
        error = f"config error: {exc}"
    except SystemExit as exc:  # --help, or argparse's own usage error
        error = "" if exc.code in (0, None) else "usage error (see --help)"
    error = mpi.agree(world, error)
    if error is not None:
        if error and rank == 0:
            print(f"mpisim: {error}", file=sys.stderr)
        sys.exit(2 if error else 0)
    if print_only:
        if rank == 0:
            print(config.dumps(cfg), end="")
        sys.exit(0)
    return cfg


def progress_bar(total: int, show: bool, unit: str = "round"):
    """A tqdm bar on stderr, shown only when ``show`` and stderr is a terminal (else a silent one)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=None if show else True, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)
