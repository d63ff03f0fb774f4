"""MPI tier across hosts: three network namespaces with their own hostnames on a bridge
(launch/hosts.sh), two ranks a host. The runs that cross hosts talk TCP between them and shared
memory inside one, and must give the models of the same runs on one host; ``auto`` must take the
collectives there. The hosts are started and removed by the tests; nothing is left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_mpi

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
