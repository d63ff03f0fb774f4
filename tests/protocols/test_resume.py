"""MPI tier: checkpoints and resumed runs, for real: a job killed with SIGKILL mid-run, resumed from its
last checkpoint, ends with the same model bit for bit as the run that was never interrupted.

Each case runs the same configuration twice: once to the end, once killed as soon as a checkpoint
past the first has been committed, then resumed (``--run.resume``) into the same directory.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mpisim import checkpoint, metrics
from mpisim.mpi import launcher

pytestmark = pytest.mark.processes

SMALL = ["--run.progress", "false", "--data.test_size", "200"]

SERVER = ["-m", "mpisim.server_mode", "--agents.n", "6", "--agents.per_rank", "3", "--run.rounds", "80",
          "--run.eval_every", "20", "--run.checkpoint_every", "10", "--run.save_model", "true",
          "--byzantine.fault", "gaussian", "--byzantine.params.var", "0.01"]
CASES = {
    # a stochastic fault, server-side averaging and a randomized rule (the server's generator)
    "server, averaging": [*SERVER, "--aggregator.name", "cwtm", "--aggregator.pre", "bucketing",
                          "--aggregator.averaging", "0.3"],
    # a stochastic codec and error feedback (agents' memories and codec generators)
    "server, qsgd + error feedback": [*SERVER, "--aggregator.name", "norm_threshold",
                                      "--compression.codec", "qsgd", "--compression.params.s", "4",
                                      "--compression.error_feedback", "true"],
    # the agents' momentum memories, with local steps (issue 19)
    "server, momentum + local steps + sampling": [*SERVER, "--aggregator.name", "cwtm", "--agents.momentum", "0.9",
                                                  "--agents.local_steps", "3", "--agents.local_lr", "0.05",
                                                  "--agents.sample", "4", "--aggregator.f", "1"],
    # FLTrust: the server's root set and its batch sampler
    "server, fltrust": [*SERVER, "--aggregator.name", "fltrust", "--server.root_samples", "40"],
    # a server of two ranks: each saves and restores its slice of the model and of the averaging memory
    "server, sharded": [*SERVER, "--aggregator.name", "krum", "--aggregator.averaging", "0.3",
                        "--server.ranks", "2"],
    "decentralized, two-faced": ["-m", "mpisim.decentralized", "--nodes.n", "6", "--nodes.per_rank", "2",
                                 "--screening.b", "1", "--byzantine.count", "1", "--byzantine.two_faced", "true",
                                 "--graph.p", "0.9", "--graph.redraw", "5", "--run.rounds", "80",
                                 "--run.eval_every", "20", "--run.checkpoint_every", "10",
                                 "--run.save_model", "true"],
}
MODEL = {"server": "model.npy", "decentralized": "models.npy"}


def ranks(args):
    """3 ranks, one more for each server rank beyond the first."""
    return 3 + (int(args[args.index("--server.ranks") + 1]) - 1 if "--server.ranks" in args else 0)


def start(args, out_dir, name):
    cmd = [*launcher.mpiexec_command(), "-n", str(ranks(args)), sys.executable, *args, *SMALL,
           "--run.out_dir", str(out_dir), "--run.name", name]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def finish(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"MPI job timed out after {timeout} s\n{err[-3000:]}")
    return proc.returncode, out, err


def kill_after_checkpoint(proc, run_dir, *, past: int, sig=signal.SIGKILL, timeout=180):
    """Wait until a checkpoint beyond round ``past`` is committed, then send ``sig`` to the whole job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = checkpoint.latest(run_dir)
        if meta is not None and meta.round > past:
            os.killpg(proc.pid, sig)
            return meta
        if proc.poll() is not None:
            pytest.fail(f"the job ended (code {proc.returncode}) before it could be interrupted:\n"
                        f"{proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("no checkpoint appeared in time")


def resume(run_dir, *extra, nprocs=3):
    return launcher.run(nprocs, ["-m", mode_module(run_dir), "--run.resume", str(run_dir), "--run.progress",
                                 "false", *extra], timeout=240)


def mode_module(run_dir):
    text = (run_dir / "config.toml").read_text()
    return "mpisim.decentralized" if "[nodes]" in text else "mpisim.server_mode"


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_killed_mid_way_and_resumed_ends_with_the_same_model(tmp_path, case):
    args = CASES[case]
    code, _, err = finish(start(args, tmp_path, "whole"))
    assert code == 0, err[-3000:]

    proc = start(args, tmp_path, "killed")
    meta = kill_after_checkpoint(proc, tmp_path / "killed", past=10)
    code, _, _ = finish(proc)
    assert code != 0 and not (tmp_path / "killed" / "summary.json").exists()  # it did not finish
    assert meta.round < 80

    resumed = resume(tmp_path / "killed", nprocs=ranks(args))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    model = MODEL["decentralized" if "decentralized" in case else "server"]
    assert (tmp_path / "killed" / model).read_bytes() == (tmp_path / "whole" / model).read_bytes()
    whole = metrics.read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    again = metrics.read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    assert [r["round"] for r in again] == [0, 20, 40, 60, 80]  # none lost, none twice
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(again) == strip(whole)  # losses, test metrics and bytes, record for record


def test_sigterm_writes_a_checkpoint_and_exits_75_and_the_run_goes_on_from_it(tmp_path):
    args = [*CASES["server, averaging"], "--run.checkpoint_every", "0"]
    code, _, err = finish(start(args, tmp_path, "whole"))
    assert code == 0, err[-3000:]

    proc = start(args, tmp_path, "stopped")
    deadline = time.monotonic() + 120
    while not (tmp_path / "stopped" / "metrics.jsonl").exists() or \
            len(metrics.read_jsonl(tmp_path / "stopped" / "metrics.jsonl")) < 2:  # past round 20
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == checkpoint.EXIT_CHECKPOINTED, err[-3000:]
    assert "--run.resume" in err
    meta = checkpoint.latest(tmp_path / "stopped")
    assert 20 <= meta.round < 80

    resumed = resume(tmp_path / "stopped")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "stopped" / "model.npy").read_bytes() == (tmp_path / "whole" / "model.npy").read_bytes()


def test_a_resume_with_another_configuration_is_refused_naming_the_fields(tmp_path):
    args = [*CASES["server, averaging"], "--run.rounds", "20"]
    code, _, err = finish(start(args, tmp_path, "run"))
    assert code == 0, err[-3000:]

    refused = resume(tmp_path / "run", "--optim.lr", "0.5", "--aggregator.f", "0")
    assert refused.returncode == 2
    assert "optim.lr (0.01 in the run, 0.5 now)" in refused.stderr and "aggregator.f" in refused.stderr
    shrunk = resume(tmp_path / "run", "--run.rounds", "10")
    assert shrunk.returncode == 2 and "run.rounds" in shrunk.stderr
    longer = resume(tmp_path / "run", "--run.rounds", "30")  # run.rounds may grow
    assert longer.returncode == 0, longer.stderr[-3000:]
    records = metrics.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["round"] for r in records] == [0, 20, 30]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rounds"] == 30
