"""python -m mpisim.one_round (Yin et al., Algorithm 2) for real, and Algorithm 1's new options (MPI tier)."""

import json

import numpy as np
import pytest

from mpisim import datasets, metrics

pytestmark = pytest.mark.processes

# Noiseless least squares: 10 workers of 50 rows each, d = 20 (every shard has at least d rows).
LEAST_SQUARES = ["--data.name", "synthetic_regression", "--data.params.samples", "500",
                 "--data.params.dim", "20", "--data.params.test_samples", "100", "--model.name", "least_squares",
                 "--model.init", "zero", "--run.progress", "false"]


def one_round(mpirun, tmp_path, nprocs, *args, name):
    result = mpirun(nprocs, ["-m", "mpisim.one_round", *LEAST_SQUARES, "--run.out_dir", str(tmp_path),
                             "--run.name", name, "--run.save_model", "true", *args], timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / name / "summary.json").read_text()), np.load(tmp_path / name / "model.npy")


def test_the_median_of_local_least_squares_returns_w_star_despite_four_huge_workers(mpirun, tmp_path):
    huge = ["--agents.n", "10", "--agents.per_rank", "5", "--byzantine.fault", "huge",
            "--byzantine.count", "4", "--aggregator.f", "4"]
    w_star = datasets.load("synthetic_regression", "", "train",
                           params={"samples": 500, "dim": 20, "test_samples": 100}, seed=0).optimum

    median, w_median = one_round(mpirun, tmp_path, 3, *huge, "--aggregator.name", "median", name="median")
    mean, w_mean = one_round(mpirun, tmp_path, 3, *huge, "--aggregator.name", "mean", name="mean")

    assert np.abs(w_median - w_star).max() < 1e-5
    assert median["final"]["distance_to_optimum"] < 1e-5 and len(median["byzantine_ids"]) == 4
    assert median["erm_all_converged_honest"] and median["erm_max_grad_norm_honest"] < 1e-6
    assert np.abs(w_mean - w_star).max() > 1e20  # 4 of 10 workers sent 1e30 everywhere
    d = 20
    assert median["bytes"]["agents_sent"] == median["bytes"]["server_received"] == 10 * 4 * d
    assert median["bytes"]["server_sent"] == 0  # nothing is broadcast


def test_packing_gives_the_same_one_round_model(mpirun, tmp_path):
    # Logistic regression by L-BFGS, a colluding fault (ALIE) across ranks.
    common = ["--agents.n", "5", "--byzantine.fault", "alie", "--byzantine.count", "1", "--aggregator.name",
              "median", "--erm.l2", "0.01", "--erm.tol", "1e-6"]

    def run(nprocs, per_rank, name):
        result = mpirun(nprocs, ["-m", "mpisim.one_round", "--data.test_size", "300", "--data.train_size", "1000",
                                 "--run.progress", "false", "--run.out_dir", str(tmp_path), "--run.name", name,
                                 "--run.save_model", "true", "--agents.per_rank", str(per_rank), *common],
                        timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
        return np.load(tmp_path / name / "model.npy"), metrics.read_jsonl(tmp_path / name / "metrics.jsonl")

    spread, spread_log = run(6, 1, "spread")
    packed, packed_log = run(3, 3, "packed")

    assert np.array_equal(spread, packed) and np.abs(spread).sum() > 0
    assert [r["round"] for r in spread_log] == [0, 1]
    assert spread_log[-1]["test_accuracy"] == packed_log[-1]["test_accuracy"] > 0.6
    assert spread_log[-1]["bytes"]["adversary_sent"] > 0  # the colluding fault's own collective


def test_the_projection_keeps_gradient_descent_in_the_ball(mpirun, tmp_path):
    # ||w*|| is about sqrt(20) = 4.5: a ball of radius 1 binds.
    result = mpirun(3, ["-m", "mpisim.server_mode", *LEAST_SQUARES, "--data.batch_size", "0", "--agents.n", "4",
                        "--agents.per_rank", "2", "--aggregator.name", "median", "--aggregator.f", "1",
                        "--byzantine.fault", "none", "--optim.lr", "0.5", "--optim.project_radius", "1.0",
                        "--run.rounds", "20", "--run.eval_every", "20", "--run.save_model", "true",
                        "--run.out_dir", str(tmp_path), "--run.name", "ball"], timeout=180)

    assert result.returncode == 0, result.stderr[-3000:]
    w = np.load(tmp_path / "ball" / "model.npy")
    assert np.linalg.norm(w.astype(np.float64)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("module, args, field", [
    ("mpisim.server_mode", ["--data.batch_fraction", "1.5"], "data.batch_fraction"),
    ("mpisim.server_mode", ["--data.batch_fraction", "-0.1"], "data.batch_fraction"),
    ("mpisim.server_mode", ["--optim.project_radius", "0"], "optim.project_radius"),
    ("mpisim.one_round", ["--aggregator.f", "2"], "aggregator.f"),       # median of 4 cannot take f = 2
    ("mpisim.one_round", ["--run.rounds", "2"], "run.rounds"),
    ("mpisim.one_round", ["--erm.tol", "0"], "erm.tol"),
])
def test_bad_input_exits_cleanly_on_every_rank(mpirun, tmp_path, module, args, field):
    result = mpirun(3, ["-m", module, "--agents.n", "4", "--agents.per_rank", "2", "--run.out_dir",
                        str(tmp_path), *args], timeout=120)

    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("mpisim: config error:") == 1 and f"{field}:" in result.stderr
    assert list(tmp_path.iterdir()) == []
