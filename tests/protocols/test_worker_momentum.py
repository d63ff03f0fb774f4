"""Worker momentum and local steps of the server mode (issue 19): the recurrence against one computed
by hand, today's bytes when they are off, the same model however the agents are packed, and bad
settings refused by field."""

import numpy as np
import pytest

from conftest import run_mpi
from mpisim import config, datasets
from mpisim.protocols import server_config

N, ROUNDS, LR, BETA = 4, 6, 0.05, 0.9
PROBLEM = ["--data.name", "synthetic_regression", "--data.params.samples", "200", "--data.params.dim", "5",
           "--data.batch_size", "0", "--model.name", "least_squares", "--model.init", "zero",
           "--agents.n", str(N), "--aggregator.name", "mean", "--aggregator.f", "0", "--byzantine.fault", "none",
           "--optim.lr", str(LR), "--run.rounds", str(ROUNDS), "--run.eval_every", str(ROUNDS)]


def job(tmp_path, name, nprocs, *args):
    result = run_mpi(nprocs, ["-m", "mpisim.server_mode", *args, "--run.out_dir", str(tmp_path),
                              "--run.name", name, "--run.progress", "false", "--run.save_model", "true"],
                     timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(tmp_path / name / "model.npy")


def parse(*args):
    cfg, _ = config.parse_args(server_config.ServerModeConfig, list(args), prog="t", description="t")
    return cfg


@pytest.mark.processes
def test_momentum_on_noiseless_least_squares_is_the_recurrence_computed_by_hand(tmp_path):
    got = job(tmp_path, "momentum", 3, *PROBLEM, "--agents.per_rank", "2", "--agents.momentum", str(BETA))

    cfg = parse(*PROBLEM)
    train = datasets.load("synthetic_regression", "", "train", params=dict(cfg.data.params), seed=0)
    shards = config.make_partition(cfg, N, labels=None, num_samples=len(train.targets)).shards
    a, b = train.inputs.astype(np.float64), train.targets.astype(np.float64)
    w, m = np.zeros(a.shape[1]), np.zeros((N, a.shape[1]))
    for _ in range(ROUNDS):  # every agent: its full local gradient, its momentum; the server: the mean
        g = np.stack([a[s].T @ (a[s] @ w - b[s]) / len(s) for s in shards])
        m = BETA * m + (1 - BETA) * g
        w = w - LR * m.mean(axis=0)
    np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    plain = job(tmp_path, "plain", 3, *PROBLEM, "--agents.per_rank", "2")
    assert not np.allclose(plain, got)  # momentum changed the path


@pytest.mark.processes
def test_local_steps_1_and_momentum_0_give_todays_bytes(tmp_path):
    args = [*PROBLEM, "--agents.per_rank", "2", "--data.batch_size", "8", "--byzantine.fault", "sign_flip",
            "--byzantine.count", "1", "--aggregator.name", "cwtm", "--aggregator.f", "1"]
    today = job(tmp_path, "today", 3, *args)
    explicit = job(tmp_path, "explicit", 3, *args, "--agents.local_steps", "1", "--agents.momentum", "0")
    assert today.tobytes() == explicit.tobytes()


@pytest.mark.processes
def test_momentum_and_local_steps_give_the_same_model_packed_or_not(tmp_path):
    # label_flip acts in every local step, and the faulty agent keeps its momentum too
    args = ["--data.name", "mnist-small", "--data.train_size", "400", "--data.test_size", "100",
            "--model.name", "logreg", "--agents.n", str(N), "--data.batch_size", "8",
            "--byzantine.fault", "label_flip", "--byzantine.count", "1", "--aggregator.name", "cwtm",
            "--aggregator.f", "1", "--agents.momentum", "0.5", "--agents.local_steps", "3",
            "--optim.lr", str(LR), "--run.rounds", str(ROUNDS), "--run.eval_every", str(ROUNDS)]
    packed = job(tmp_path, "packed", 3, *args, "--agents.per_rank", "2")
    unpacked = job(tmp_path, "unpacked", 5, *args, "--agents.per_rank", "1")
    assert packed.tobytes() == unpacked.tobytes()


@pytest.mark.parametrize("args, field", [
    (["--agents.momentum", "1.0"], "agents.momentum"),
    (["--agents.momentum", "-0.1"], "agents.momentum"),
    (["--agents.momentum", "nan"], "agents.momentum"),
    (["--agents.local_steps", "0"], "agents.local_steps"),
    (["--agents.local_lr", "-1"], "agents.local_lr"),
])
def test_bad_momentum_and_local_steps_are_refused_by_field(args, field):
    with pytest.raises(config.ConfigError) as caught:
        server_config.validate_server_mode(parse(*args), world_size=None)
    assert caught.value.field == field
