"""The fixture every pytest-mpi test of this folder takes (they run inside mpiexec: see test_collectives.py)."""

import pytest
from mpi4py import MPI


@pytest.fixture
def world():
    """A duplicate of COMM_WORLD: the library's messages never collide with the caller's."""
    comm = MPI.COMM_WORLD.Dup()
    yield comm
    comm.Free()
