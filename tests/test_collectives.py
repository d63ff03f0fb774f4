"""MPI tier: collectives under pytest-mpi on 4 ranks, and abort-on-error."""

import re
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

pytestmark = pytest.mark.processes


@pytest.mark.parametrize("mode", ["polled", "blocking"])
def test_collectives_pass_on_four_ranks(mpirun, mode):
    result = mpirun(4, ["-m", "pytest", "--with-mpi", "-q", "-p", "no:cacheprovider",
                        str(ROOT / "tests" / "collectives")], timeout=180, env={"MPISIM_COLLECTIVES": mode})

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    # every rank ran every test of the folder (one line per rank): none skipped, none missing
    collected = subprocess.run([sys.executable, "-m", "pytest", "--with-mpi", "--collect-only", "-q",
                                "-p", "no:cacheprovider", str(ROOT / "tests" / "collectives")],
                               capture_output=True, text=True, timeout=120, cwd=ROOT).stdout
    count = int(re.search(r"(\d+) tests? collected", collected).group(1))
    assert count >= 30 and result.stdout.count(f"{count} passed") == 4, result.stdout[-2000:]


def test_exception_on_one_rank_aborts_the_whole_job(mpirun):
    # Rank 1 fails while ranks 0 and 2 wait in a collective: without the
    # abort they would wait forever and the timeout would fire.
    code = textwrap.dedent("""
        from mpisim.mpi import comm as mpi
        from mpisim.mpi.comm import MPI

        @mpi.abort_on_error
        def main():
            world = MPI.COMM_WORLD
            if world.rank == 1:
                raise RuntimeError("shard file is corrupt")
            world.Barrier()

        main()
    """)

    result = mpirun(3, ["-c", code], timeout=60)

    assert result.returncode != 0
    assert "[mpisim rank 1] uncaught RuntimeError" in result.stderr
    assert "shard file is corrupt" in result.stderr
