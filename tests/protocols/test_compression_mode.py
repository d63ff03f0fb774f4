"""MPI tier: the server mode with compressed uplinks (Ghosh et al.) and signSGD's majority vote.

Least squares on a small generated problem keeps the jobs short; every job
runs at 3+ ranks under a timeout.
"""

import hashlib
import json
import math

import numpy as np
import pytest

from mpisim import metrics

pytestmark = pytest.mark.processes

ENTRY = ["-m", "mpisim.server_mode"]
PROBLEM = ["--run.progress", "false", "--data.name", "synthetic_regression", "--data.params.samples", "600",
           "--data.params.dim", "50", "--data.params.test_samples", "100", "--model.name", "least_squares",
           "--model.init", "zero", "--data.batch_size", "0", "--optim.lr", "0.05"]


def run_job(mpirun, tmp_path, nprocs, *args, name="run", timeout=240):
    result = mpirun(nprocs, [*ENTRY, *PROBLEM, "--run.out_dir", str(tmp_path), "--run.name", name, *args],
                    timeout=timeout)
    return result, tmp_path / name


def test_bytes_in_the_metrics_are_the_payloads_sent(mpirun, tmp_path):
    # Algorithm 1: scaled sign with the l2 norm beside it, thresholding on the sent norms.
    rounds, n = 4, 6
    result, run_dir = run_job(mpirun, tmp_path, 4, "--agents.n", str(n), "--agents.per_rank", "2",
                              "--run.rounds", str(rounds), "--run.eval_every", "2",
                              "--compression.codec", "scaled_sign", "--compression.side_norm", "2",
                              "--aggregator.name", "norm_threshold", "--aggregator.f", "1",
                              "--byzantine.fault", "gaussian", "--byzantine.count", "1")

    assert result.returncode == 0, result.stderr[-3000:]
    d = json.loads((run_dir / "summary.json").read_text())["d"]
    payload = 4 + 4 + math.ceil(d / 8)  # side norm, l1 scale, one bit a coordinate
    records = metrics.read_jsonl(run_dir / "metrics.jsonl")
    for record in records:
        moved = record["bytes"]
        assert moved["agents_sent"] == moved["server_received"] == record["round"] * n * payload
        assert moved["server_sent"] == moved["agents_received"] == record["round"] * 3 * 4 * d
    assert records[-1]["distance_to_optimum"] < records[0]["distance_to_optimum"]


def test_signsgd_vote_downlink_keeps_every_replica_equal_to_the_server_model(mpirun, tmp_path):
    rounds, n = 5, 5
    result, run_dir = run_job(mpirun, tmp_path, 3, "--agents.n", str(n), "--agents.per_rank", "3",
                              "--run.rounds", str(rounds), "--run.eval_every", "5", "--run.save_model", "true",
                              "--compression.codec", "sign", "--aggregator.name", "majority_vote",
                              "--aggregator.f", "1", "--optim.lr", "0.01",
                              "--byzantine.fault", "sign_flip", "--byzantine.count", "1")

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    d = summary["d"]
    moved = metrics.read_jsonl(run_dir / "metrics.jsonl")[-1]["bytes"]
    assert moved["agents_sent"] == rounds * n * math.ceil(d / 8)       # sign bits up
    assert moved["server_sent"] == rounds * 2 * math.ceil(d / 8)       # the vote down, to 2 agent ranks
    model = np.load(run_dir / "model.npy")
    replicas = [r["replica_sha256"] for r in summary["ranks"] if r["role"] == "agents"]
    assert replicas == [hashlib.sha256(model.tobytes()).hexdigest()] * 2
    # Every step moves each coordinate by +-lr from 0: after 5 steps, an odd multiple of lr.
    steps = model / 0.01
    assert np.allclose(steps, np.round(steps), atol=1e-3)
    assert np.all(np.round(steps).astype(int) % 2 == 1) and np.all(np.abs(steps) <= rounds + 1e-3)


def test_packing_gives_the_same_model_with_a_stochastic_codec_and_error_feedback(mpirun, tmp_path):
    common = ["--agents.n", "5", "--run.rounds", "6", "--run.eval_every", "3", "--run.save_model", "true",
              "--compression.codec", "qsgd", "--compression.params.s", "2", "--compression.error_feedback",
              "true", "--aggregator.name", "norm_threshold", "--aggregator.f", "1",
              "--byzantine.fault", "gaussian", "--byzantine.count", "1", "--run.seed", "4"]
    spread, spread_dir = run_job(mpirun, tmp_path, 6, *common, "--agents.per_rank", "1", name="spread")
    packed, packed_dir = run_job(mpirun, tmp_path, 3, *common, "--agents.per_rank", "3", name="packed")

    assert spread.returncode == 0, spread.stderr[-3000:]
    assert packed.returncode == 0, packed.stderr[-3000:]
    assert np.load(spread_dir / "model.npy").tobytes() == np.load(packed_dir / "model.npy").tobytes()
    a = metrics.read_jsonl(spread_dir / "metrics.jsonl")
    b = metrics.read_jsonl(packed_dir / "metrics.jsonl")
    assert [r["test_loss"] for r in a] == [r["test_loss"] for r in b]


@pytest.mark.parametrize("args, words", [
    (["--compression.codec", "topk", "--compression.params.k", "51"], "compression.params.k"),
    (["--compression.codec", "qsgd", "--compression.params.s", "0"], "compression.params.s"),
    (["--compression.codec", "sign", "--aggregator.name", "norm_threshold"], "compression.codec"),
    (["--compression.side_norm", "2", "--aggregator.name", "mean"], "compression.side_norm"),
    (["--compression.codec", "sign", "--compression.faulty_norm", "0"], "compression.faulty_norm"),
])
def test_bad_compression_config_exits_on_every_rank_with_the_field_named(mpirun, tmp_path, args, words):
    result, run_dir = run_job(mpirun, tmp_path, 3, "--agents.n", "4", "--agents.per_rank", "2", *args,
                              timeout=120)

    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("mpisim: config error:") == 1, result.stderr
    assert words in result.stderr
    assert not run_dir.exists()
