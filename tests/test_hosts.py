"""MPI tier across hosts: three network namespaces with their own hostnames on a bridge
(launch/hosts.sh), two ranks a host. The runs that cross hosts talk TCP between them and shared
memory inside one, and must give the models of the same runs on one host; ``auto`` must take the
collectives there. The hosts are started and removed by the tests; nothing is left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_mpi
from mpisim import checkpoint

pytestmark = pytest.mark.processes

HOSTS = ROOT / "launch" / "hosts.sh"
SMALL = ["--data.name", "synthetic_regression", "--data.params.samples", "600", "--data.params.dim", "30",
         "--model.name", "least_squares", "--optim.lr", "0.05", "--run.rounds", "6", "--run.eval_every", "3",
         "--run.save_model", "true", "--run.progress", "false"]


def left_behind() -> str:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = Path("/etc/hosts").read_text()  # the hosts' names (lines that end in "# mpisim test host")
    return "\n".join(line for line in (netns + links + names).splitlines() if "mpisim-" in line)


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("the test hosts need root, ip (iproute2) and unshare")
    assert not left_behind(), f"test hosts from an earlier run are still up:\n{left_behind()}"
    started = subprocess.run(["bash", str(HOSTS), "start", "3"], capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    try:
        line = subprocess.run(["bash", str(HOSTS), "mpiexec", "2"], capture_output=True, text=True,
                              timeout=30, check=True).stdout.split()
        yield line
    finally:
        subprocess.run(["bash", str(HOSTS), "stop"], capture_output=True, text=True, timeout=60)
        assert not left_behind(), left_behind()


def run_both(hosts_line, tmp_path, nprocs: int, args: list[str], model_file: str = "model.npy"):
    """The run across the hosts (two ranks each) and on this host; their summaries and models."""
    from mpisim.mpi import launcher

    out = {}
    across = " ".join([*launcher.mpiexec_command(), *hosts_line])
    for where in ("hosts", "one"):
        with pytest.MonkeyPatch.context() as patch:  # the launcher reads MPISIM_MPIEXEC from our environment
            if where == "hosts":
                patch.setenv("MPISIM_MPIEXEC", across)
            result = run_mpi(nprocs, [*args, "--run.out_dir", str(tmp_path), "--run.name", where], timeout=240)
        assert result.returncode == 0, result.stderr[-4000:]
        summary = json.loads((tmp_path / where / "summary.json").read_text())
        out[where] = (summary, np.load(tmp_path / where / model_file))
    return out


def test_the_server_mode_across_hosts_takes_the_collectives_and_gives_the_same_model(hosts, tmp_path):
    args = ["-m", "mpisim.server_mode", *SMALL, "--agents.n", "7", "--agents.per_rank", "2",
            "--aggregator.name", "cwtm", "--aggregator.f", "1", "--byzantine.fault", "alie", "--byzantine.count", "1"]
    runs = run_both(hosts, tmp_path, 5, args)

    across, one = runs["hosts"][0], runs["one"][0]
    assert across["hosts"] == 3 and one["hosts"] == 1
    assert [r["host"] for r in across["ranks"]] == ["mpisim-h1", "mpisim-h1", "mpisim-h2", "mpisim-h2", "mpisim-h3"]
    assert across["transport"] == "collectives" and one["transport"] == "shared"
    assert across["bytes"] == one["bytes"]
    assert np.array_equal(runs["hosts"][1], runs["one"][1])


def test_a_sharded_server_on_one_host_and_its_agents_on_two_others_gives_the_same_model(hosts, tmp_path):
    # Two slots a host: the two server ranks on mpisim-h1, the agents' ranks on h2 and h3.
    args = ["-m", "mpisim.server_mode", *SMALL, "--server.ranks", "2", "--agents.n", "6", "--agents.per_rank", "2",
            "--aggregator.name", "median", "--aggregator.f", "1", "--byzantine.fault", "sign_flip",
            "--byzantine.count", "1"]
    runs = run_both(hosts, tmp_path, 5, args)

    across = runs["hosts"][0]
    assert across["transport"] == "sharded" and across["hosts"] == 3
    assert {r["host"] for r in across["ranks"] if r["role"] == "server"} == {"mpisim-h1"}
    assert np.array_equal(runs["hosts"][1], runs["one"][1])


def test_the_decentralized_exchange_across_hosts_gives_the_same_models(hosts, tmp_path):
    args = ["-m", "mpisim.decentralized", *SMALL, "--nodes.n", "9", "--nodes.per_rank", "2", "--graph.p", "0.8",
            "--screening.b", "1", "--byzantine.count", "1"]
    runs = run_both(hosts, tmp_path, 5, args, model_file="models.npy")

    assert runs["hosts"][0]["hosts"] == 3
    assert np.array_equal(runs["hosts"][1], runs["one"][1])


def test_one_round_across_hosts_gives_the_same_model(hosts, tmp_path):
    args = ["-m", "mpisim.one_round", *SMALL[:8], *SMALL[14:], "--agents.n", "9", "--agents.per_rank", "2",
            "--model.init", "zero", "--aggregator.name", "median", "--byzantine.count", "2",
            "--byzantine.fault", "huge"]
    runs = run_both(hosts, tmp_path, 6, args)

    assert runs["hosts"][0]["hosts"] == 3 and runs["one"][0]["hosts"] == 1
    assert np.array_equal(runs["hosts"][1], runs["one"][1])


# ---------------------------------------------------------------- lost ranks and hosts: the watchdog

TIMEOUT = 3.0  # run.round_timeout of the fault tests
FAULTY = [*SMALL[:-8], "--run.rounds", "800", "--run.eval_every", "200", "--run.save_model", "true",
          "--run.progress", "false", "--run.checkpoint_every", "100", "--agents.n", "7", "--agents.per_rank", "2",
          "--aggregator.name", "cwtm", "--aggregator.f", "1", "--byzantine.fault", "alie", "--byzantine.count", "1"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The fault tests' run, whole, on this host: the model every resume must end with."""
    folder = tmp_path_factory.mktemp("whole")
    result = run_mpi(5, ["-m", "mpisim.server_mode", *FAULTY, "--run.out_dir", str(folder), "--run.name", "whole"],
                     timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(folder / "whole" / "model.npy")


def processes_of(run_name: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"run[.]name {run_name}( |$)"], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def rank_pid(run_name: str, rank: int) -> int:
    for pid in processes_of(run_name):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in environ and b"python" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError(f"no process of rank {rank} of {run_name}")


def unmapped_new_segments(before: set[str]) -> set[str]:
    """Names in /dev/shm that were not there before and that no live process maps."""
    new = set(os.listdir("/dev/shm")) - before
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped |= {name for name in new if name in maps.read_text()}
        except OSError:
            continue
    return new - mapped


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["stop a rank", "cut a link", "kill a host"])
def test_a_lost_rank_or_host_ends_the_job_within_the_round_timeout_and_a_resume_gives_the_whole_model(
        hosts, uninterrupted, tmp_path, fault):
    from mpisim.mpi import launcher

    name = f"fault-{fault.replace(' ', '-')}"
    run_dir = tmp_path / name
    command = [*launcher.mpiexec_command(), *hosts, "-n", "5", sys.executable, "-m", "mpisim.server_mode", *FAULTY,
               "--run.round_timeout", str(TIMEOUT), "--run.out_dir", str(tmp_path), "--run.name", name]
    shm_before = set(os.listdir("/dev/shm"))
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(t >= 200 for t in checkpoint.rounds(run_dir)):
            assert job.poll() is None and time.monotonic() < deadline, "the run did not reach its checkpoint 200"
            time.sleep(0.1)
        # Rank 4 is alone on mpisim-h3 (two ranks a host).
        if fault == "stop a rank":
            os.kill(rank_pid(name, 4), signal.SIGSTOP)
        elif fault == "cut a link":
            subprocess.run(["ip", "link", "set", "mpisim-v3", "down"], check=True, timeout=30)
        else:
            pids = subprocess.run(["ip", "netns", "pids", "mpisim-h3"], capture_output=True, text=True).stdout
            for pid in pids.split():
                os.kill(int(pid), signal.SIGKILL)
        struck = time.monotonic()
        _, stderr = job.communicate(timeout=TIMEOUT + 30)
        ended = time.monotonic() - struck
        gone = False
        while not gone and time.monotonic() - struck < TIMEOUT + 15:
            gone = not processes_of(name)
            time.sleep(0.1)
        gone_after = time.monotonic() - struck
    finally:
        subprocess.run(["ip", "link", "set", "mpisim-v3", "up"], timeout=30)
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        for pid in processes_of(name):
            os.kill(pid, signal.SIGKILL)

    assert job.returncode != 0
    if fault == "kill a host":
        # hydra sees its proxy on mpisim-h3 die and ends the job at once, with its own message
        assert ended < TIMEOUT, stderr[-3000:]
    else:
        # the watchdog on rank 0: the round did not end within the timeout, rank 4 did not answer
        assert job.returncode == 3, stderr[-3000:]
        assert "did not end within run.round_timeout = 3 s" in stderr
        assert "Not answering: 1 rank on mpisim-h3:\n  rank 4 (mpisim-h3): silent for" in stderr
        assert ended < TIMEOUT + 6, (ended, stderr[-3000:])
    # every rank is gone, the cut-off one by its own watchdog within the timeout and its grace
    assert gone and gone_after < TIMEOUT + 10, gone_after
    assert not unmapped_new_segments(shm_before)

    # the run stopped part way, its checkpoints intact; resumed on this one host, it ends as the whole run
    assert not (run_dir / "summary.json").exists() and 200 <= max(checkpoint.rounds(run_dir)) < 800
    resumed = run_mpi(5, ["-m", "mpisim.server_mode", "--run.resume", str(run_dir)], timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert np.load(run_dir / "model.npy").tobytes() == uninterrupted.tobytes()
