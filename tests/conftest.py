"""Shared fixtures: where the real MNIST lies, and a launcher for real MPI jobs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpisim.mpi import launcher

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("MPISIM_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))


def pytest_ignore_collect(collection_path, config):
    # tests/collectives/ holds pytest-mpi tests: they run inside mpiexec
    # (see test_collectives.py), not in the plain pytest process.
    if "collectives" in collection_path.parts and not config.getoption("--with-mpi", default=False):
        return True
    return None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the original MNIST files are not in {MNIST_DIR} (set MPISIM_MNIST_DIR)")
    return MNIST_DIR


def run_mpi(nprocs: int, args: list[str], *, timeout: float, cwd: Path | None = None,
            env: dict | None = None) -> launcher.Completed:
    """Run ``mpiexec -n nprocs python ARGS`` (see mpisim.mpi.launcher); fail the test on timeout."""
    try:
        result = launcher.run(nprocs, args, timeout=timeout, cwd=cwd or ROOT, env=env)
    except launcher.LauncherError as exc:
        pytest.skip(str(exc))
    if result.timed_out:
        pytest.fail(f"MPI job timed out after {timeout} s: {' '.join(result.command)}\n"
                    f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")
    return result


@pytest.fixture
def mpirun():
    return run_mpi
