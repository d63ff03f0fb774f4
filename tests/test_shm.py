"""MPI tier: what a job leaves in /dev/shm, and a /dev/shm too small for the shared windows.

MPICH (the wheel) keeps a segment of each MPI world in /dev/shm, about 3 MB, which only
MPI_Finalize removes: a job that ends in MPI_Abort or kill -9 must not leave it behind (about 20
fill Docker's 64 MB, and MPICH then cannot start). The segments are told apart from those of
other jobs running on the machine at the same time by asking the job's own processes which
files of /dev/shm they have mapped (/proc/PID/maps), not by listing /dev/shm.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT
from mpisim.mpi import launcher

pytestmark = pytest.mark.processes

SHM = Path("/dev/shm")
# MPICH's names: a world's segment, its VCI segment, and the files behind windows and collectives.
MPICH = re.compile(r"mpich_(?:shm|vci)_[0-9a-f]+_[0-9]+|mpich_shar_tmp[A-Za-z0-9]{6}")
SMALL = ["--run.progress", "false", "--data.test_size", "200"]


def mpich_files_mapped(maps_text: str) -> set[str]:
    """Names of MPICH's files of /dev/shm in lines of /proc/PID/maps, whether still linked or not
    ("NAME (deleted)"); the lines may come glued together through mpiexec's output."""
    return {name for name in re.findall(r"/dev/shm/(\S+)", maps_text) if MPICH.fullmatch(name)}


def left_in_shm(names) -> list[str]:
    return sorted(name for name in names if (SHM / name).exists())


# Every rank prints the lines of its /proc/self/maps that map a file of /dev/shm, then rank 1 fails
# while the others wait in a barrier: the job ends in MPI_Abort (abort_on_error). Plain
# MPI.COMM_WORLD, not mpisim's world(): the abort path alone.
ABORTING = textwrap.dedent(r"""
    from mpisim.mpi import comm as mpi
    from mpisim.mpi.comm import MPI

    @mpi.abort_on_error
    def main():
        world = MPI.COMM_WORLD
        with open("/proc/self/maps") as maps:
            print("".join(line for line in maps if " /dev/shm/" in line), end="", flush=True)
        world.Barrier()
        if world.rank == 1:
            raise RuntimeError("shard file is corrupt")
        world.Barrier()

    main()
""")


def test_a_job_that_ends_in_mpi_abort_leaves_no_segment_in_dev_shm(mpirun):
    if not SHM.is_dir():
        pytest.skip("no /dev/shm on this machine")
    result = mpirun(3, ["-c", ABORTING], timeout=120)

    assert result.returncode != 0
    assert "[mpisim rank 1] uncaught RuntimeError" in result.stderr
    mapped = mpich_files_mapped(result.stdout)
    if not any(name.startswith("mpich_shm_") for name in mapped):
        pytest.skip("this MPI keeps no mpich_shm_* segment in /dev/shm")
    assert left_in_shm(mapped) == []


def rank_pids(launcher_pid: int) -> list[int]:
    """The python processes under an mpiexec (hydra starts each rank in a process group of its own)."""
    parent, command = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])

    def under(pid):
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == launcher_pid:
                return True
        return False

    return [pid for pid in command if b"mpisim.server_mode" in command[pid] and under(pid)]


def test_a_job_killed_with_sigkill_leaves_no_segment_in_dev_shm(tmp_path):
    if not SHM.is_dir():
        pytest.skip("no /dev/shm on this machine")
    cmd = [*launcher.mpiexec_command(), "-n", "3", sys.executable, "-m", "mpisim.server_mode",
           "--agents.n", "4", "--agents.per_rank", "2", "--run.rounds", "100000", "--run.eval_every", "100000",
           *SMALL, "--run.out_dir", str(tmp_path), "--run.name", "killed"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    mapped = set()
    try:
        # The run directory appears once every rank is past set-up's first steps (mpisim's world()).
        deadline = time.monotonic() + 120
        while not (tmp_path / "killed" / "config.toml").exists():
            assert proc.poll() is None, f"the job ended (code {proc.returncode}) before it could be killed"
            assert time.monotonic() < deadline, "the job did not start in time"
            time.sleep(0.05)
        pids = rank_pids(proc.pid)
        assert len(pids) == 3, pids
        for pid in pids:
            mapped |= mpich_files_mapped(Path(f"/proc/{pid}/maps").read_text())
    finally:  # kill -9 every rank first, then the launcher
        for pid in rank_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    if not any(name.startswith("mpich_shm_") for name in mapped):
        pytest.skip("this MPI keeps no mpich_shm_* segment in /dev/shm")
    assert left_in_shm(mapped) == []


def private_small_shm_launcher() -> str:
    """MPISIM_MPIEXEC that runs mpiexec in a mount namespace of its own with a 10 MB /dev/shm
    (skips the test where unshare or mount are not permitted)."""
    mount = "mount -t tmpfs -o size=10m tmpfs /dev/shm"
    try:
        probe = subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run unshare: {exc}")
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private /dev/shm (unshare -m + mount need root or CAP_SYS_ADMIN): "
                    f"{probe.stderr.strip()}")
    mpiexec = " ".join(shlex.quote(arg) for arg in launcher.mpiexec_command())
    return f"unshare -m sh -c '{mount} && exec \"$0\" \"$@\"' {mpiexec}"


def test_shared_windows_larger_than_dev_shm_stop_every_rank_with_a_message(mpirun, tmp_path, monkeypatch):
    monkeypatch.setenv("MPISIM_MPIEXEC", private_small_shm_launcher())
    # LeNet: d = 431,080; the model and 6 agents' rows take 12 MB, more than the 10 MB of /dev/shm.
    result = mpirun(3, ["-m", "mpisim.server_mode", "--agents.n", "6", "--agents.per_rank", "3",
                        "--run.rounds", "3", *SMALL, "--run.out_dir", str(tmp_path)],
                    timeout=180, env={"MPISIM_TRANSPORT": "shared"})

    assert result.returncode == 2, result.stderr[-3000:]
    message = [line for line in result.stderr.splitlines() if "MPISIM_TRANSPORT=shared" in line]
    assert len(message) == 1, result.stderr[-3000:]  # once, from rank 0
    need, free = (int(x.replace(",", "")) for x in
                  re.search(r"need ([\d,]+) bytes of /dev/shm, which has ([\d,]+) bytes free", message[0]).groups())
    assert free < need and need >= 6 * 431_080 * 4 and free < 10 * 2**20
    assert "MPISIM_TRANSPORT=collectives" in message[0] and "--shm-size" in message[0]
    assert "Traceback" not in result.stderr and "BAD TERMINATION" not in result.stdout + result.stderr
