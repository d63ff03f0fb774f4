"""The driver: one set-up, schedule, log and summary for every protocol (MPI tier, and a fake protocol)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from mpisim import metrics

pytestmark = pytest.mark.processes

SMALL = ["--run.progress", "false", "--data.test_size", "300"]


def test_least_squares_with_full_local_gradients_reaches_the_optimum(mpirun, tmp_path):
    # Ghosh et al.'s first experiment, no fault, noiseless: 20 agents with the
    # gradient of their whole shard of 200 rows; the mean of the agents'
    # gradients is the full gradient, whose Hessian A^T A / N is close to I.
    result = mpirun(3, ["-m", "mpisim.server_mode", "--data.name", "synthetic_regression",
                        "--data.params.samples", "4000", "--data.params.dim", "100",
                        "--data.params.test_samples", "500", "--model.name", "least_squares",
                        "--data.batch_size", "0", "--agents.n", "20", "--agents.per_rank", "10",
                        "--aggregator.name", "mean", "--byzantine.fault", "none", "--optim.lr", "0.5",
                        "--run.rounds", "60", "--run.eval_every", "20", "--run.progress", "false",
                        "--run.out_dir", str(tmp_path), "--run.name", "ls"], timeout=240)

    assert result.returncode == 0, result.stderr[-3000:]
    records = metrics.read_jsonl(tmp_path / "ls" / "metrics.jsonl")
    distances = [r["distance_to_optimum"] for r in records]
    assert distances[0] > 1.0 and distances[-1] < 1e-3, distances
    assert all(a > b or b < 1e-6 for a, b in zip(distances, distances[1:]))  # down to float32's floor
    assert records[-1]["test_loss"] < 1e-6 and "test_accuracy" not in records[-1]
    assert "final distance to the optimum" in result.stdout


def test_print_config_runs_without_mpiexec():
    result = subprocess.run([sys.executable, "-m", "mpisim.server_mode", "--print-config",
                             "--agents.per_rank", "5"], cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "[agents]" in result.stdout and "per_rank = 5" in result.stdout


@pytest.mark.parametrize("args, field", [
    (["--run.out_dir", "/proc/mpisim-results"], "run.out_dir"),   # seen only when creating it
    (["--run.out_dir", "/dev/null"], "run.out_dir"),
    (["--run.name", "../escaped"], "run.name"),
])
def test_a_run_directory_that_cannot_be_made_stops_every_rank_before_work(mpirun, tmp_path, args, field):
    result = mpirun(3, ["-m", "mpisim.server_mode", *SMALL, "--agents.n", "4", "--agents.per_rank", "2",
                        "--run.out_dir", str(tmp_path), *args], timeout=120)

    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("mpisim: config error:") == 1 and f"{field}:" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_config_directory_is_a_config_error_on_every_rank(mpirun, tmp_path):
    result = mpirun(3, ["-m", "mpisim.decentralized", "--config", str(tmp_path)], timeout=120)

    assert result.returncode == 2 and "config error: --config:" in result.stderr
    assert "Traceback" not in result.stderr


def test_mean_under_nan_faults_blames_the_faulty_agents(mpirun, tmp_path):
    result = mpirun(3, ["-m", "mpisim.server_mode", *SMALL, "--agents.n", "4", "--agents.per_rank", "2",
                        "--aggregator.name", "mean", "--byzantine.fault", "nan", "--run.rounds", "2",
                        "--run.eval_every", "2", "--run.out_dir", str(tmp_path), "--run.name", "nan"],
                    timeout=120)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "the model diverged" in result.stdout and "faulty agents" in result.stdout
    assert "lower --optim.lr" not in result.stdout
    assert json.loads((tmp_path / "nan" / "summary.json").read_text())["diverged"] is True


def test_dgd_under_huge_messages_diverges_and_reaches_no_consensus(mpirun, tmp_path):
    result = mpirun(3, ["-m", "mpisim.decentralized", *SMALL, "--nodes.n", "6", "--nodes.per_rank", "2",
                        "--screening.name", "dgd", "--screening.b", "1", "--byzantine.fault", "huge",
                        "--byzantine.count", "1", "--graph.p", "0.9", "--graph.redraw", "5",
                        "--run.rounds", "4", "--run.eval_every", "4", "--run.out_dir", str(tmp_path),
                        "--run.name", "huge"], timeout=120)

    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "huge" / "summary.json").read_text())
    assert summary["diverged"] is True and summary["consensus_reached"] is False
    assert "diverged" in result.stdout and "not reached" in result.stdout


FAKE = textwrap.dedent("""
    import errno, sys
    import numpy as np
    from mpisim import config, metrics
    from mpisim.protocols import driver, server_config

    class Count(driver.Role):
        role = "server"
        def __init__(self):
            super().__init__()
            self.w = 0.0
        def step(self, t):
            self.w += t
        def evaluate(self):
            return {"test_loss": 1.0 / (1 + self.w), "test_accuracy": 0.5}
        def final_arrays(self):
            return {"model": np.array([self.w], dtype=np.float32)}

    class Fake(driver.Protocol):
        mode, config_class, prog, description = "fake", server_config.ServerModeConfig, "fake", "fake"
        validate = staticmethod(lambda cfg, world_size: None)
        plan = classmethod(lambda cls, cfg: None)
        run_name = classmethod(lambda cls, cfg, plan: ["fake"])
        create = classmethod(lambda cls, world, cfg, plan: Count())
        headline = classmethod(lambda cls, summary: "fake done")

    def full_disk(self, name, array):
        raise OSError(errno.ENOSPC, "No space left on device")

    if sys.argv[1] == "full":
        metrics.RunLog.save_array = full_disk
    sys.exit(driver.main(Fake, sys.argv[2:]))
""")


@pytest.mark.parametrize("disk", ["ok", "full"])
def test_the_driver_logs_on_schedule_and_writes_the_summary_before_the_model(tmp_path, disk):
    args = ["--run.rounds", "7", "--run.eval_every", "3", "--run.save_model", "true", "--run.progress",
            "false", "--run.out_dir", str(tmp_path), "--run.name", "run"]
    result = subprocess.run([sys.executable, "-c", FAKE, disk, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)

    run_dir = tmp_path / "run"
    records = metrics.read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in records] == [0, 3, 6, 7]
    assert records[-1]["test_loss"] == pytest.approx(1 / (1 + 28))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 7 and summary["final"]["round"] == 7
    if disk == "ok":
        assert result.returncode == 0, result.stderr
        assert "fake done" in result.stdout and np.load(run_dir / "model.npy")[0] == 28
    else:
        assert result.returncode != 0 and "No space left" in result.stderr
        assert not (run_dir / "model.npy").exists()



# ---------------------------------------------------------------- the watchdog (run.round_timeout) on one host

WATCHED = ["--data.name", "synthetic_regression", "--data.params.samples", "300", "--data.params.dim", "20",
           "--model.name", "least_squares", "--agents.n", "4", "--agents.per_rank", "2", "--run.progress", "false",
           "--run.save_model", "true"]


def test_a_watched_run_gives_the_unwatched_model(mpirun, tmp_path):
    for name, extra in (("off", []), ("on", ["--run.round_timeout", "30"])):
        result = mpirun(3, ["-m", "mpisim.server_mode", *WATCHED, "--run.rounds", "300", "--run.out_dir",
                            str(tmp_path), "--run.name", name, *extra], timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]

    assert np.load(tmp_path / "on" / "model.npy").tobytes() == np.load(tmp_path / "off" / "model.npy").tobytes()


@pytest.mark.timeout(120)
def test_a_stopped_rank_ends_the_job_within_the_round_timeout_naming_it(tmp_path):
    """SIGSTOP on the rank of agents 2 and 3: rank 0's watchdog names it and its host, exit 3, nothing left."""
    import os
    import signal
    import time

    from mpisim.mpi import comm, launcher

    command = [*launcher.mpiexec_command(), "-n", "3", sys.executable, "-m", "mpisim.server_mode", *WATCHED,
               "--run.rounds", "100000", "--run.round_timeout", "2", "--run.out_dir", str(tmp_path),
               "--run.name", "stopped"]
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "stopped" / "metrics.jsonl").exists():
            assert job.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.0)
        ranks = subprocess.run(["pgrep", "-f", "run[.]name stopped"], capture_output=True, text=True).stdout.split()
        rank2 = next(int(pid) for pid in ranks
                     if b"PMI_RANK=2" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        os.kill(rank2, signal.SIGSTOP)
        struck = time.monotonic()
        _, stderr = job.communicate(timeout=30)
        ended = time.monotonic() - struck
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)

    host = comm.host_name()
    assert job.returncode == 3, stderr[-2000:]
    assert f"Not answering: 1 rank on {host}:\n  rank 2 ({host}): silent for" in stderr
    assert ended < 2 + 5, ended
    assert not subprocess.run(["pgrep", "-f", "run[.]name stopped"], capture_output=True, text=True).stdout
